"""Random (version 4) UUIDs for request and event ids, cheaper than uuid.uuid4() on the hot path.

uuid.uuid4() reads 16 bytes from the kernel and builds a UUID object per call (3.4 µs); these read
4 KiB of os.urandom at a time and format the text directly (1.0 µs). A forked child starts afresh,
so it never repeats its parent's next ids. Called on the event loop's thread only (the middleware, the
proxy handler, the event build): two threads could be handed the same bytes.
"""

from __future__ import annotations

import os

__all__ = ("uuid4_hex", "uuid4_text")

_random = b""  # os.urandom bytes not handed out yet, 16 per id
_at = 0


def _forget() -> None:
    global _random, _at
    _random, _at = b"", 0


os.register_at_fork(after_in_child=_forget)


def uuid4_hex() -> str:
    """Like uuid.uuid4().hex: 32 lower-case hex digits, version 4, RFC 4122 variant."""
    global _random, _at
    at = _at
    if at >= len(_random):
        _random, at = os.urandom(4096), 0
    _at = at + 16
    h = _random[at : at + 16].hex()
    return f"{h[:12]}4{h[13:16]}{'89ab'[int(h[16], 16) & 3]}{h[17:]}"


def uuid4_text() -> str:
    """Like str(uuid.uuid4()): the canonical 8-4-4-4-12 form."""
    h = uuid4_hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
