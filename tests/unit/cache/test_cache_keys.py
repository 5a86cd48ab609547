"""The pure cache rules: key, which requests and responses may use the cache, TTL, Vary, ETags."""

from __future__ import annotations

import hashlib

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from llmproxy.cache.keys import (
    RequestRule,
    accepts_encoding,
    body_digest,
    cache_key,
    etag_matches,
    parse_cache_control,
    request_rule,
    response_ttl,
    sorted_query,
    stored_headers,
    vary_matches,
    vary_names,
    vary_snapshot,
)

PREFIX = "llmproxy:cache:"
GET = request_rule("GET", None)


def headers(*pairs: tuple[str, str]) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(pairs))


def ttl(
    *pairs: tuple[str, str],
    status: int = 200,
    rule: RequestRule = GET,
    default_ttl: float = 300.0,
    stream_responses: bool = False,
    max_object_bytes: int = 1 << 20,
) -> float:
    return response_ttl(
        status,
        headers(*pairs),
        rule,
        default_ttl=default_ttl,
        stream_responses=stream_responses,
        max_object_bytes=max_object_bytes,
    )


def key(
    project: str = "p1",
    method: str = "GET",
    path: str = "/v1/models",
    query: str = "",
    accept: str = "",
    body_hash: str = "",
) -> str:
    return cache_key(PREFIX, project, method, path, query, accept, body_hash)


# --- the key ---------------------------------------------------------------------------------


def test_json_bodies_differing_only_in_key_order_and_spacing_share_a_digest() -> None:
    assert body_digest(b'{"a":1,"b":2}') == body_digest(b'{"b": 2, "a": 1}')
    assert body_digest(b'{"m":{"y":[1,2],"x":null}}') == body_digest(b'{ "m" : { "x":null, "y":[1, 2] } }')


def test_json_bodies_with_different_values_or_array_order_have_different_digests() -> None:
    assert body_digest(b'{"a":1,"b":2}') != body_digest(b'{"a":1,"b":3}')
    assert body_digest(b'{"a":[1,2]}') != body_digest(b'{"a":[2,1]}')


def test_a_body_that_is_not_json_is_hashed_as_sent() -> None:
    assert body_digest(b"not json{") == hashlib.sha256(b"not json{").hexdigest()
    assert body_digest(b"") == hashlib.sha256(b"").hexdigest()


def test_key_is_readable_up_to_the_path_then_a_sha256() -> None:
    k = key(project="proj-9", method="POST", path="/v1/chat/completions", body_hash="ab")
    assert k.startswith("llmproxy:cache:proj-9:POST:/v1/chat/completions:")
    digest = k.rsplit(":", 1)[1]
    assert len(digest) == 64 and int(digest, 16) >= 0


def test_projects_never_share_a_key() -> None:
    assert key(project="p1") != key(project="p2")
    # and not by a trick of concatenation either: the hashed fields are separated
    assert cache_key(PREFIX, "p1", "GET", "/a", "", "", "") != cache_key(
        PREFIX, "p", "1GET", "/a", "", "", ""
    )


@pytest.mark.parametrize(
    "change",
    [
        {"method": "POST"},
        {"path": "/v1/embeddings"},
        {"query": "limit=2"},
        {"accept": "text/event-stream"},
        {"body_hash": "ff"},
    ],
)
def test_every_part_of_the_request_identity_changes_the_key(change: dict[str, str]) -> None:
    assert key(**change) != key()


def test_query_parameter_order_does_not_change_the_key() -> None:
    assert key(query="b=2&a=1&a=0") == key(query="a=0&a=1&b=2")
    assert sorted_query("z=1&a=2") == "a=2&z=1"
    assert sorted_query("single=1") == "single=1"


# --- which requests use the cache -------------------------------------------------------------


def test_plain_get_is_looked_up_and_stored() -> None:
    assert request_rule("GET", None) == RequestRule(lookup=True, store=True, opted_in=False, max_age=None)


def test_head_is_answered_from_the_cache_but_never_stored() -> None:
    rule = request_rule("HEAD", None)
    assert rule.lookup and not rule.store


def test_post_without_opt_in_bypasses_the_cache() -> None:
    assert request_rule("POST", None) == RequestRule(False, False, False, None)
    assert not request_rule("POST", "no-transform").lookup
    assert not request_rule("POST", "max-age=0").store


@pytest.mark.parametrize("cc", ["public", "max-age=60", "public, max-age=60", "Max-Age=60"])
def test_post_opts_in_with_public_or_max_age(cc: str) -> None:
    rule = request_rule("POST", cc)
    assert rule.lookup and rule.store and rule.opted_in


def test_client_max_age_is_kept_as_the_oldest_acceptable_age() -> None:
    assert request_rule("POST", "max-age=60").max_age == 60
    assert request_rule("GET", "public").max_age is None


@pytest.mark.parametrize("method", ["PUT", "PATCH", "DELETE", "OPTIONS"])
def test_other_methods_bypass_even_when_asking_for_caching(method: str) -> None:
    assert request_rule(method, "public, max-age=60") == RequestRule(False, False, False, None)
    assert request_rule(method, None) == RequestRule(False, False, False, None)


def test_request_no_store_keeps_the_cache_out_entirely() -> None:
    assert request_rule("GET", "no-store") == RequestRule(False, False, False, None)
    assert request_rule("POST", "public, no-store") == RequestRule(False, False, False, None)


@pytest.mark.parametrize("cc,pragma", [("no-cache", None), ("max-age=0", None), (None, "no-cache")])
def test_request_no_cache_skips_the_lookup_but_stores_the_fresh_answer(
    cc: str | None, pragma: str | None
) -> None:
    rule = request_rule("GET", cc, pragma)
    assert not rule.lookup and rule.store


def test_cache_control_parsing_lowercases_names_and_unquotes_arguments() -> None:
    assert parse_cache_control('Public, Max-Age="30", no-cache') == {
        "public": None,
        "max-age": "30",
        "no-cache": None,
    }
    assert parse_cache_control(None) == {}
    assert parse_cache_control(" , ,") == {}


# --- which responses are stored, and for how long ----------------------------------------------


def test_a_plain_200_is_kept_for_the_default_ttl() -> None:
    assert ttl(("Content-Type", "application/json")) == 300.0


def test_upstream_s_maxage_beats_max_age_beats_the_clients_max_age() -> None:
    client = request_rule("POST", "max-age=20")
    assert ttl(("Cache-Control", "max-age=60, s-maxage=90"), rule=client) == 90.0
    assert ttl(("Cache-Control", "max-age=60"), rule=client) == 60.0
    assert ttl(rule=client) == 20.0
    assert ttl(rule=request_rule("POST", "public")) == 300.0


def test_upstream_age_is_subtracted_from_its_freshness() -> None:
    assert ttl(("Cache-Control", "max-age=60"), ("Age", "45")) == 15.0
    assert ttl(("Cache-Control", "max-age=60"), ("Age", "75")) == 0.0


def test_upstream_max_age_zero_or_malformed_means_not_stored() -> None:
    assert ttl(("Cache-Control", "max-age=0")) == 0.0
    assert ttl(("Cache-Control", "max-age=soon")) == 0.0


def test_expires_counts_when_no_max_age_is_given() -> None:
    date = "Wed, 01 Jan 2025 00:00:00 GMT"
    assert ttl(("Date", date), ("Expires", "Wed, 01 Jan 2025 00:02:00 GMT")) == 120.0
    assert ttl(("Date", date), ("Expires", "0")) == 0.0


@pytest.mark.parametrize("status", [201, 203, 204, 301, 304, 404, 429, 500])
def test_only_status_200_is_stored(status: int) -> None:
    assert ttl(status=status) == 0.0


@pytest.mark.parametrize(
    "pair",
    [
        ("Cache-Control", "no-store"),
        ("Cache-Control", "private"),
        ("Cache-Control", "private, max-age=600"),
        ("Cache-Control", "no-cache"),
        ("Set-Cookie", "session=abc"),
        ("Vary", "*"),
        ("Vary", "Accept, *"),
        ("Content-Length", str((1 << 20) + 1)),
    ],
)
def test_responses_that_forbid_or_defeat_storing_are_not_stored(pair: tuple[str, str]) -> None:
    assert ttl(pair) == 0.0


def test_a_request_that_may_not_store_gets_nothing_stored() -> None:
    assert ttl(rule=request_rule("HEAD", None)) == 0.0
    assert ttl(rule=request_rule("POST", None)) == 0.0


def test_streams_are_stored_only_when_enabled_and_the_client_opted_in() -> None:
    sse = ("Content-Type", "text/event-stream; charset=utf-8")
    opted = request_rule("POST", "public, max-age=60")
    assert ttl(sse, rule=opted, stream_responses=True) == 60.0
    assert ttl(sse, rule=opted, stream_responses=False) == 0.0
    assert ttl(sse, rule=request_rule("GET", None), stream_responses=True) == 0.0


# --- Vary ------------------------------------------------------------------------------------------


def test_vary_names_are_lowercased_sorted_and_merged_across_headers() -> None:
    assert vary_names(["Accept-Language, X-Tenant", "accept-language"]) == ("accept-language", "x-tenant")
    assert vary_names([]) == ()
    assert vary_names(["*"]) is None


def test_vary_matches_only_the_same_values_including_absence() -> None:
    snapshot = vary_snapshot(("accept-language", "x-tenant"), headers(("Accept-Language", "de")))
    assert snapshot == [("accept-language", "de"), ("x-tenant", None)]
    assert vary_matches(snapshot, headers(("accept-language", "de")))
    assert not vary_matches(snapshot, headers(("Accept-Language", "fr")))
    assert not vary_matches(snapshot, headers(("Accept-Language", "de"), ("X-Tenant", "t1")))
    assert vary_matches([], headers(("Anything", "x")))


# --- stored headers, ETags, encodings ------------------------------------------------------------------


def test_per_exchange_and_hop_by_hop_headers_are_never_stored() -> None:
    kept = stored_headers(
        headers(
            ("Content-Type", "application/json"),
            ("ETag", '"v1"'),
            ("openai-processing-ms", "12"),
            ("Date", "Wed, 01 Jan 2025 00:00:00 GMT"),
            ("Age", "3"),
            ("X-Request-ID", "req_upstream"),
            ("Server-Timing", "upstream;dur=3"),
            ("Set-Cookie", "a=b"),
            ("Transfer-Encoding", "chunked"),
            ("Content-Length", "10"),
            ("Connection", "keep-alive, X-Hop"),
            ("X-Hop", "1"),
        )
    )
    assert kept == [("Content-Type", "application/json"), ("ETag", '"v1"'), ("openai-processing-ms", "12")]


@pytest.mark.parametrize(
    "if_none_match,etag,matches",
    [
        ('"v1"', '"v1"', True),
        ('W/"v1"', '"v1"', True),
        ('"v0", "v1"', 'W/"v1"', True),
        ("*", '"v1"', True),
        ('"v2"', '"v1"', False),
        ("v1", '"v1"', False),
    ],
)
def test_if_none_match_uses_weak_comparison(if_none_match: str, etag: str, matches: bool) -> None:
    assert etag_matches(if_none_match, etag) is matches


@pytest.mark.parametrize(
    "accept_encoding,coding,accepted",
    [
        (None, "identity", True),
        (None, "gzip", False),
        ("gzip, br", "gzip", True),
        ("br;q=1.0, GZIP;q=0.5", "gzip", True),
        ("gzip;q=0", "gzip", False),
        ("gzip;q=0.000", "gzip", False),
        ("*", "gzip", True),
        ("deflate", "gzip", False),
    ],
)
def test_a_compressed_entry_is_served_only_to_clients_accepting_its_coding(
    accept_encoding: str | None, coding: str, accepted: bool
) -> None:
    assert accepts_encoding(accept_encoding, coding) is accepted


def test_json_nested_too_deeply_to_canonicalise_is_hashed_as_sent() -> None:
    body = b'{"a":' + b"[" * 5000 + b"]" * 5000 + b"}"
    assert body_digest(body) == hashlib.sha256(body).hexdigest()
