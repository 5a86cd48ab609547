"""Which headers cross the proxy in each direction (the connections themselves: ``pool``)."""

from __future__ import annotations

from multidict import MultiMapping

__all__ = (
    "HOP_BY_HOP",
    "request_headers",
    "response_headers",
)

# RFC 9110 §7.6.1 connection-specific fields, plus the framing the pool derives from the body it sends.
HOP_BY_HOP = frozenset(
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
    }
)

# Who the client is stays with the proxy; the withering token never leaves it; cookies for the
# proxy's own origin (the admin session) must not reach the upstream; Expect is answered here.
_REQUEST_DROP = HOP_BY_HOP | {
    "host",
    "content-length",
    "authorization",
    "cookie",
    "expect",
    "x-request-id",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-port",
    "x-forwarded-server",
    "x-original-forwarded-for",
    "x-real-ip",
    "x-client-ip",
    "x-cluster-client-ip",
    "true-client-ip",
    "cf-connecting-ip",
    "cf-ipcountry",
    "fastly-client-ip",
}

# Content-Length stays: bodies pass unchanged, so the upstream's framing is still right. Upstream
# cookies belong to the upstream's host, not to the proxy's origin. The upstream's X-Request-ID is
# kept as X-Upstream-Request-ID since X-Request-ID is the proxy's own.
_RESPONSE_DROP = HOP_BY_HOP | {"set-cookie", "x-request-id"}


def _connection_tokens(headers: MultiMapping[str]) -> frozenset[str]:
    """Headers named in Connection are hop-by-hop for this message only (RFC 9110 §7.6.1)."""
    return frozenset(
        t.strip().lower() for value in headers.getall("Connection", ()) for t in value.split(",")
    )


def request_headers(headers: MultiMapping[str], upstream_key: str, request_id: str) -> list[tuple[str, str]]:
    """The client's headers as the upstream gets them: the project key as bearer, privacy kept."""
    drop = _REQUEST_DROP
    if "Connection" in headers:
        drop = drop | _connection_tokens(headers)
    out = [(name, value) for name, value in headers.items() if name.lower() not in drop]
    out.append(("Authorization", "Bearer " + upstream_key))
    out.append(("X-Request-ID", request_id))
    return out


def response_headers(headers: MultiMapping[str]) -> list[tuple[str, str]]:
    """The upstream's headers as the client gets them (hop-by-hop and cookies dropped)."""
    drop = _RESPONSE_DROP
    if "Connection" in headers:
        drop = drop | _connection_tokens(headers)
    out: list[tuple[str, str]] = []
    for name, value in headers.items():
        lname = name.lower()
        if lname not in drop:
            out.append((name, value))
        elif lname == "x-request-id":
            out.append(("X-Upstream-Request-ID", value))
    return out
