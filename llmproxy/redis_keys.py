"""Every Redis key, consumer group and channel name llmproxy uses, spelled once (as arq's constants).

The event stream's own name is a setting (``REDIS_STREAM_KEY``); the keys beside it derive from it.
The rate limit and the invalidation channel live under ``PREFIX`` (``AuthSettings.redis_prefix``),
cached responses under ``CACHE_PREFIX`` (``REDIS_CACHE_KEY_PREFIX``).
"""

from __future__ import annotations

__all__ = (
    "CACHE_PREFIX",
    "CONSUMER_GROUP",
    "PREFIX",
    "STREAM",
    "dead_letter_key",
    "dead_list_key",
    "group_name",
    "invalidation_channel",
    "list_key",
    "rate_limit_prefix",
    "stats_key",
    "tokens_rate_prefix",
    "totals_key",
)

STREAM = "llm-proxy-events"  # the default of REDIS_STREAM_KEY
CONSUMER_GROUP = "llm-proxy-dispatchers"  # the default of REDIS_CONSUMER_GROUP: group_name's first part
PREFIX = "llmproxy:"  # the default of AuthSettings.redis_prefix
CACHE_PREFIX = f"{PREFIX}cache:"  # the default of REDIS_CACHE_KEY_PREFIX; a key is this + cache.keys' hash


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


def list_key(stream: str) -> str:
    """The ``redis`` bus's list: its own key, so switching between ``redis`` and ``redis-streams`` never
    hits a WRONGTYPE."""
    return f"{stream}:list"


def dead_list_key(stream: str) -> str:
    """Where the ``redis`` bus keeps the entries it gave up on."""
    return f"{list_key(stream)}:dead"


def rate_limit_prefix(prefix: str) -> str:
    """Each token's sliding window of the shared rate limit is a sorted set at this + the token id."""
    return f"{prefix}ratelimit:"


def tokens_rate_prefix(prefix: str) -> str:
    """Tokens per minute: a hash per token or project (``<prefix>tpm:token:<id>``), second -> tokens."""
    return f"{prefix}tpm:"


def invalidation_channel(prefix: str) -> str:
    """The pub/sub channel of cache invalidations (``token:<id>``, ``project:<id>``)."""
    return f"{prefix}invalidate"
