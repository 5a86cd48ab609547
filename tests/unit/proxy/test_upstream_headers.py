"""Which headers cross the proxy, in each direction, and how the upstream session is set up."""

from __future__ import annotations

from multidict import CIMultiDict, CIMultiDictProxy

from llmproxy.proxy.upstream import request_headers, response_headers


def headers(*pairs: tuple[str, str]) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(pairs))


def test_the_withering_token_is_replaced_by_the_project_key() -> None:
    out = request_headers(headers(("Authorization", "Bearer sk-withering")), "sk-project", "rid-1")
    assert [v for k, v in out if k.lower() == "authorization"] == ["Bearer sk-project"]
    assert not any("sk-withering" in v for _, v in out)


def test_client_identifying_and_hop_by_hop_request_headers_are_dropped() -> None:
    dropped = [
        ("Host", "proxy.example"),
        ("Content-Length", "12"),
        ("Transfer-Encoding", "chunked"),
        ("Connection", "keep-alive, X-Hop-Custom"),
        ("X-Hop-Custom", "named by Connection"),
        ("Keep-Alive", "timeout=5"),
        ("Proxy-Authorization", "Basic abc"),
        ("Proxy-Connection", "keep-alive"),
        ("TE", "trailers"),
        ("Trailer", "X-Checksum"),
        ("Upgrade", "h2c"),
        ("X-Forwarded-For", "10.0.0.1"),
        ("X-Forwarded-Host", "proxy.example"),
        ("X-Forwarded-Proto", "https"),
        ("X-Real-IP", "10.0.0.1"),
        ("Forwarded", "for=10.0.0.1"),
        ("CF-Connecting-IP", "10.0.0.1"),
        ("True-Client-IP", "10.0.0.1"),
        ("Cookie", "llmproxy_admin=session"),
        ("Expect", "100-continue"),
        ("X-Request-ID", "client-id"),
    ]
    kept = [
        ("Content-Type", "application/json"),
        ("Accept", "text/event-stream"),
        ("Accept-Encoding", "gzip"),
        ("OpenAI-Organization", "org-1"),
        ("User-Agent", "OpenAI/Python 1.0"),
    ]
    out = request_headers(headers(*dropped, *kept), "sk-project", "rid-1")
    assert out == [*kept, ("Authorization", "Bearer sk-project"), ("X-Request-ID", "rid-1")]


def test_repeated_request_headers_are_kept_in_order() -> None:
    out = request_headers(headers(("X-Tag", "a"), ("X-Tag", "b")), "k", "r")
    assert [v for k, v in out if k == "X-Tag"] == ["a", "b"]


def test_upstream_response_headers_pass_except_hop_by_hop_and_cookies() -> None:
    out = response_headers(
        headers(
            ("Content-Type", "application/json"),
            ("Content-Length", "42"),
            ("Content-Encoding", "gzip"),
            ("Transfer-Encoding", "chunked"),
            ("Connection", "keep-alive, X-Internal"),
            ("X-Internal", "hop"),
            ("Keep-Alive", "timeout=5"),
            ("Set-Cookie", "__cf_bm=abc; path=/"),
            ("x-ratelimit-remaining-requests", "9"),
            ("retry-after", "3"),
        )
    )
    assert out == [
        ("Content-Type", "application/json"),
        ("Content-Length", "42"),
        ("Content-Encoding", "gzip"),
        ("x-ratelimit-remaining-requests", "9"),
        ("retry-after", "3"),
    ]


def test_the_upstream_request_id_is_kept_under_its_own_name() -> None:
    out = response_headers(headers(("x-request-id", "req_abc")))
    assert out == [("X-Upstream-Request-ID", "req_abc")]
