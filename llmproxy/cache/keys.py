"""Pure HTTP-cache decisions: the key, whether a request/response may use the cache, TTL, Vary, ETags.

No I/O and no aiohttp objects, only strings and header mappings, so every rule here is unit-tested in
microseconds. The choices follow RFC 9111 as far as a project-scoped shared cache in front of an LLM
API needs (SPEC §8); what is left out is listed in the cache part of the README.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from email.utils import parsedate_to_datetime
from typing import NamedTuple

import msgspec
from multidict import MultiMapping

from llmproxy.config_values import is_decimal

__all__ = (
    "RequestRule",
    "accepts_encoding",
    "body_digest",
    "cache_key",
    "etag_matches",
    "parse_cache_control",
    "request_rule",
    "response_ttl",
    "sorted_query",
    "stored_headers",
    "upstream_age",
    "vary_matches",
    "vary_names",
    "vary_snapshot",
)

# Never stored with an entry: connection-specific fields (RFC 9110 §7.6.1), fields that belong to one
# exchange (Date, Age, the proxy's X-Request-ID and Server-Timing, the upstream's request id), cookies,
# and Content-Length, which aiohttp recomputes from the stored body.
_NOT_STORED = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "date",
        "age",
        "set-cookie",
        "x-request-id",
        "x-upstream-request-id",
        "server-timing",
        "content-length",
    }
)
_SEP = b"\x00"  # cannot occur in a request target or header value: the hashed fields never run together
_json_decode = msgspec.json.Decoder().decode
_json_encode = msgspec.json.Encoder(order="sorted").encode


class RequestRule(NamedTuple):
    """What a request allows: serve it from the cache (``lookup``), keep its answer (``store``)."""

    lookup: bool
    store: bool
    opted_in: bool  # the client asked for caching: Cache-Control public or max-age>0
    max_age: int | None  # the client's max-age: oldest entry it accepts, and the TTL it suggests


_BYPASS = RequestRule(lookup=False, store=False, opted_in=False, max_age=None)
_PLAIN_GET = RequestRule(lookup=True, store=True, opted_in=False, max_age=None)
_PLAIN_HEAD = RequestRule(lookup=True, store=False, opted_in=False, max_age=None)


def parse_cache_control(value: str | None) -> dict[str, str | None]:
    """``Cache-Control`` as {lowercased directive: argument or None}; the first of duplicates wins."""
    directives: dict[str, str | None] = {}
    if not value:
        return directives
    for part in value.split(","):
        name, eq, arg = part.partition("=")
        name = name.strip().lower()
        if name and name not in directives:
            directives[name] = arg.strip().strip('"') if eq else None
    return directives


def _seconds(directives: Mapping[str, str | None], name: str) -> int | None:
    """A delta-seconds argument (RFC 9111 §1.2.2), None when absent or malformed."""
    arg = directives.get(name)
    if arg is None or not is_decimal(arg):
        return None
    return int(arg)


def request_rule(method: str, cache_control: str | None, pragma: str | None = None) -> RequestRule:
    """How the cache may treat a request: GET/HEAD always, POST only when the client opted in.

    ``no-store`` keeps the cache out entirely. ``no-cache`` and ``max-age=0`` (and a lone
    ``Pragma: no-cache``) ask for a fresh answer: the lookup is skipped, the fresh answer is stored.
    HEAD is answered from a GET's entry but never stored (its upstream answer has no body).
    """
    if cache_control is None and pragma is None:  # the common case, decided without parsing
        if method == "GET":
            return _PLAIN_GET
        return _PLAIN_HEAD if method == "HEAD" else _BYPASS
    if method not in ("GET", "HEAD", "POST"):
        return _BYPASS
    cc = parse_cache_control(cache_control)
    if "no-store" in cc:
        return _BYPASS
    max_age = _seconds(cc, "max-age")
    opted_in = "public" in cc or bool(max_age)
    if method == "POST" and not opted_in:
        return _BYPASS
    revalidate = "no-cache" in cc or max_age == 0
    if cache_control is None and pragma is not None and "no-cache" in pragma.lower():
        revalidate = True
    return RequestRule(
        lookup=not revalidate, store=method != "HEAD", opted_in=opted_in, max_age=max_age or None
    )


def body_digest(body: bytes) -> str:
    """SHA-256 of a request body; a JSON body is canonicalised first (keys sorted, no whitespace) so
    ``{"a":1,"b":2}`` and ``{"b": 2, "a": 1}`` share an entry. Only the key sees the canonical form."""
    try:
        canonical = _json_encode(_json_decode(body))
    except (msgspec.DecodeError, msgspec.EncodeError, RecursionError):  # (RecursionError: nested ~1000 deep)
        canonical = body
    return hashlib.sha256(canonical).hexdigest()


def sorted_query(query: str) -> str:
    """The raw query with its ``&``-separated pairs sorted, so parameter order doesn't split entries."""
    if "&" not in query:
        return query
    return "&".join(sorted(query.split("&")))


def cache_key(
    prefix: str, project_id: str, method: str, path: str, query: str, accept: str, body_hash: str
) -> str:
    """``<prefix><project>:<METHOD>:<path>:<sha256>``: readable up to the path, so a purge can name a
    project or an endpoint (SPEC §8); the hash covers every part, the project included."""
    digest = hashlib.sha256(
        _SEP.join(
            (
                project_id.encode(),
                method.encode(),
                path.encode(),
                sorted_query(query).encode(),
                accept.encode(),
                body_hash.encode(),
            )
        )
    ).hexdigest()
    return f"{prefix}{project_id}:{method}:{path}:{digest}"


def vary_names(values: list[str]) -> tuple[str, ...] | None:
    """The lowercased, sorted field names of the response's Vary headers; None for ``Vary: *``."""
    names: set[str] = set()
    for value in values:
        for name in value.split(","):
            name = name.strip().lower()
            if name == "*":
                return None
            if name:
                names.add(name)
    return tuple(sorted(names))


def _joined(headers: MultiMapping[str], name: str) -> str | None:
    values = headers.getall(name, ())
    if not values:
        return None
    return values[0] if len(values) == 1 else ",".join(values)


def vary_snapshot(names: tuple[str, ...], headers: MultiMapping[str]) -> list[tuple[str, str | None]]:
    """The request's values of the Vary fields, kept with the entry."""
    return [(name, _joined(headers, name)) for name in names]


def vary_matches(snapshot: list[tuple[str, str | None]], headers: MultiMapping[str]) -> bool:
    """Whether a request presents the same Vary field values as the one that produced the entry."""
    for name, value in snapshot:
        if _joined(headers, name) != value:
            return False
    return True


def _freshness(headers: MultiMapping[str], cc: Mapping[str, str | None]) -> float | None:
    """The upstream's freshness lifetime: s-maxage > max-age > Expires − Date; None when silent."""
    for name in ("s-maxage", "max-age"):
        if name in cc:
            seconds = _seconds(cc, name)
            return float(seconds) if seconds is not None else 0.0  # malformed: treat as stale
    expires = headers.get("Expires")
    if expires is None:
        return None
    try:
        expires_at = parsedate_to_datetime(expires).timestamp()
    except (TypeError, ValueError, IndexError):
        return 0.0  # an invalid Expires means "already expired" (RFC 9111 §5.3)
    date = headers.get("Date")
    try:
        now = parsedate_to_datetime(date).timestamp() if date else time.time()
    except (TypeError, ValueError, IndexError):
        now = time.time()
    return expires_at - now


def response_ttl(
    status: int,
    headers: MultiMapping[str],
    rule: RequestRule,
    *,
    default_ttl: float,
    stream_responses: bool,
    max_object_bytes: int,
) -> float:
    """Seconds to keep an upstream answer, 0 when it must not be stored.

    Stored: status 200 without ``no-store``/``no-cache``/``private``, ``Set-Cookie`` or ``Vary: *``,
    not announced larger than the limit; an event stream only when enabled and the client opted in.
    TTL: upstream s-maxage > max-age (> Expires) less its Age, else the client's max-age, else default.
    """
    if status != 200 or not rule.store or "Set-Cookie" in headers:
        return 0.0
    cc = parse_cache_control(_joined(headers, "Cache-Control"))
    if "no-store" in cc or "no-cache" in cc or "private" in cc:
        return 0.0
    vary = headers.getall("Vary", ())
    if vary and vary_names(vary) is None:
        return 0.0
    if headers.get("Content-Type", "").startswith("text/event-stream"):
        if not (stream_responses and rule.opted_in):
            return 0.0
    length = headers.get("Content-Length")
    if length is not None and is_decimal(length) and int(length) > max_object_bytes:
        return 0.0
    lifetime = _freshness(headers, cc)
    if lifetime is not None:
        return max(lifetime - upstream_age(headers), 0.0)
    if rule.max_age:
        return float(rule.max_age)
    return max(default_ttl, 0.0)


def upstream_age(headers: MultiMapping[str]) -> int:
    """The Age the upstream (or a cache before it) already gave the response."""
    age = headers.get("Age")
    return int(age) if age is not None and is_decimal(age) else 0


def stored_headers(headers: MultiMapping[str]) -> list[tuple[str, str]]:
    """The upstream's headers as an entry keeps them (see ``_NOT_STORED``, plus Connection-named)."""
    drop = _NOT_STORED
    if "Connection" in headers:
        named = {t.strip().lower() for v in headers.getall("Connection") for t in v.split(",")}
        drop = drop | named
    # str(): aiohttp names are istr, which a msgpack encoder refuses
    return [(str(name), value) for name, value in headers.items() if name.lower() not in drop]


def _opaque(tag: str) -> str:
    tag = tag.strip()
    return tag[2:] if tag.startswith(("W/", "w/")) else tag


def etag_matches(if_none_match: str, etag: str) -> bool:
    """``If-None-Match`` against an entry's ETag, by weak comparison (RFC 9110 §13.1.2)."""
    if if_none_match.strip() == "*":
        return True
    wanted = _opaque(etag)
    return any(_opaque(candidate) == wanted for candidate in if_none_match.split(","))


def accepts_encoding(accept_encoding: str | None, coding: str) -> bool:
    """Whether a client accepts a stored body's content coding (``identity`` always; q=0 refuses)."""
    if coding == "identity":
        return True
    if not accept_encoding:
        return False
    for item in accept_encoding.split(","):
        name, _, params = item.partition(";")
        name = name.strip().lower()
        if name == coding or name == "*":
            q = params.strip().lower()
            return not (q.startswith("q=") and q[2:].strip().rstrip("0").rstrip(".") in ("", "0"))
    return False
