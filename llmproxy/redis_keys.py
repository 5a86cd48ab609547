"""Every Redis key, consumer group and channel name llmproxy uses, spelled once (as arq's constants).

The event stream's own name is a setting (``REDIS_STREAM_KEY``); the keys beside it derive from it.
"""

from __future__ import annotations

__all__ = ("dead_letter_key", "group_name", "stats_key", "totals_key")


def dead_letter_key(stream: str) -> str:
    """The stream where entries that exhausted ``DISPATCHER_MAX_DELIVERIES`` (or were refused) go."""
    return f"{stream}:dead"


def totals_key(stream: str) -> str:
    """The hash where dispatchers count, per service, what they acked and dead-lettered (field
    ``<service>:delivered``, ``<service>:dead_lettered``), in the same transaction as the ack: exact
    whatever happens to the worker. Counters of workers gone are folded in beside them
    (``<service>:retried``, ``<service>:failed``)."""
    return f"{stream}:dispatcher-totals"


def stats_key(stream: str) -> str:
    """The hash where every live worker reports its counters (field = service:consumer)."""
    return f"{stream}:dispatcher-stats"


def group_name(group: str, service: str) -> str:
    """The group of a service started by the server: one group per service, so services fan out."""
    return f"{group}-{service}"
