"""How the text of one setting becomes its value; each parser raises ValueError saying what is wrong.

``config`` maps every SPEC §3 name to one of these; the management API reuses ``upstream_url``.
"""

from __future__ import annotations

import base64
import re
from typing import Any

from yarl import URL

__all__ = (
    "boolean",
    "choice",
    "database_url",
    "encryption_key",
    "integer",
    "is_decimal",
    "listen_addr",
    "parse_duration",
    "positive_duration",
    "services",
    "text",
    "upstream_url",
)


def is_decimal(text: str) -> bool:
    """ASCII digits only: what ``int()`` takes from any text we did not write ourselves. ``str.isdigit``
    also passes "²", which ``int()`` refuses (a 500 where a header or query was trusted)."""
    return text.isascii() and text.isdigit()


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(value: str | float | int) -> float:
    """``500ms``, ``30s``, ``5m``, ``1h`` or plain seconds → seconds."""
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"negative duration: {value!r}")
        return float(value)
    m = _DURATION.match(str(value))
    if not m:
        raise ValueError(f"not a duration (use 500ms, 30s, 5m, 1h or seconds): {value!r}")
    return float(m.group(1)) * _UNIT_SECONDS[m.group(2)]


def positive_duration(value: str | float | int) -> float:
    """A duration that must be more than 0 (a timeout of 0 would close every connection at once)."""
    if (seconds := parse_duration(value)) > 0:
        return seconds
    raise ValueError(f"must be more than 0: {value!r}")


def boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    s = str(value).strip().lower()
    if s in ("1", "true", "yes", "on"):
        return True
    if s in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not a boolean (use true/false): {value!r}")


def integer(value: Any, minimum: int = 0) -> int:
    if isinstance(value, bool):
        raise ValueError(f"not an integer: {value!r}")
    try:
        n = int(str(value).strip())
    except ValueError:
        raise ValueError(f"not an integer: {value!r}") from None
    if n < minimum:
        raise ValueError(f"must be >= {minimum}: {value!r}")
    return n


def listen_addr(value: Any) -> str:
    s = str(value).strip()
    if s.startswith(":"):
        s = "0.0.0.0" + s
    host, sep, port = s.rpartition(":")
    if not sep or not is_decimal(port) or not (0 <= int(port) <= 65535):
        raise ValueError(f"not HOST:PORT: {value!r}")
    return s


def upstream_url(value: Any) -> str:
    """``value`` without trailing slashes if the proxy can dial it: http(s), a host, a port 1-65535 when
    given. Parsed with yarl, as the upstream pool does; the ValueError says what is wrong."""
    s = str(value).strip().rstrip("/")
    try:
        url = URL(s)
    except ValueError as exc:  # yarl's reasons: "Port out of range 0-65535", "Invalid IPv6 URL"...
        raise ValueError(f"not a usable URL ({exc}): {value!r}") from None
    if not re.match(r"https?://\S+$", s) or not s.isprintable() or not url.raw_host or url.explicit_port == 0:
        raise ValueError(f"not an http(s) URL with a host and a port 1-65535: {value!r}")
    return s


def database_url(value: Any) -> str:
    s = str(value).strip()
    if not (s.startswith("sqlite://") or s.startswith(("postgresql://", "postgres://"))):
        raise ValueError(f"must be sqlite:///PATH or postgresql://...: {value!r}")
    return s


def encryption_key(value: Any) -> bytes | None:
    s = str(value).strip()
    if not s:
        return None
    try:
        raw = base64.b64decode(s, validate=True)
    except ValueError:
        raise ValueError("ENCRYPTION_KEY is not valid base64") from None
    if len(raw) != 32:
        raise ValueError(f"ENCRYPTION_KEY must decode to 32 bytes, got {len(raw)}")
    return raw


def choice(*choices: str) -> Any:
    def parse(value: Any) -> str:
        s = str(value).strip().lower()
        if s not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}: {value!r}")
        return s

    return parse


def services(value: Any) -> tuple[str, ...]:
    items = value if isinstance(value, list | tuple) else str(value).split(",")
    return tuple(s.strip().lower() for s in items if str(s).strip())


def text(value: Any) -> str:
    return str(value)
