"""Policy: which requests the proxy lets through before it even looks at the token."""

from __future__ import annotations

import msgspec
import pytest
from multidict import CIMultiDict

from llmproxy.config import ApiConfig
from llmproxy.errors import ProxyError, Refusal
from llmproxy.proxy.policy import Policy, normalise_path, split_target


def policy(**changes: object) -> Policy:
    return Policy(msgspec.structs.replace(ApiConfig(), **changes))


def refusal_of(call: object, *args: object) -> ProxyError:
    with pytest.raises(ProxyError) as info:
        call(*args)  # type: ignore[operator]
    return info.value


# --- endpoints ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/v1/chat/completions",
        "/v1/models",
        "/v1/models/gpt-4o",
        "/v1/images/generations",
        "/v1/audio/transcriptions",
        "/v1/files/file-abc/content",
        "/v1/files/file%2Dabc",  # an encoded ordinary character is fine
    ],
)
def test_allowed_endpoints_pass_with_exact_or_prefix_entries(path: str) -> None:
    assert policy().endpoint(path).startswith("/v1/")


@pytest.mark.parametrize(
    "path",
    [
        "/v1/chat/completionsX",  # not a prefix match
        "/v1/chat/completions/extra",  # an exact entry has nothing below it
        "/v1/imagesX/generations",  # "/v1/images/*" covers /v1/images and below only
        "/v1/chat",
        "/manage/projects",
        "/",
    ],
)
def test_paths_not_listed_are_refused_with_404(path: str) -> None:
    assert refusal_of(policy().endpoint, path).refusal is Refusal.ENDPOINT_NOT_ALLOWED


def test_a_prefix_entry_covers_the_prefix_itself() -> None:
    assert policy(allowed_endpoints=("/v1/images/*",)).endpoint("/v1/images") == "/v1/images"


@pytest.mark.parametrize(
    "path",
    [
        "/v1/../manage/projects",
        "/v1/models/../../manage/projects",
        "/v1/%2e%2e/manage",
        "/v1/%2E%2E/manage",
        "/v1/models/%2e%2e/%2e%2e/manage",
        "/v1/models/%252e%252e/x",  # double encoded
        "/v1/./chat/completions",
        "/v1/models/.",
        "/v1//chat/completions",
        "//v1/chat/completions",
        "/v1/models\\..\\..\\manage",
        "/v1/models/%5c..%5cmanage",
        "/v1/models/a%2fb",
        "/v1/models/a%2Fb",
        "/v1/models/a%00b",
        "/v1/models/a\x00b",
        "/v1/models/a%0d%0aX-Injected:1",
        "/v1/models/%ff",
        "http://evil.example/v1/models",
        "v1/models",
    ],
)
def test_path_tricks_are_refused_with_404_before_matching(path: str) -> None:
    assert refusal_of(policy().endpoint, path).refusal is Refusal.ENDPOINT_NOT_ALLOWED


def test_path_tricks_are_refused_even_when_every_endpoint_is_allowed() -> None:
    assert refusal_of(policy(allowed_endpoints=()).endpoint, "/v1/%2e%2e/manage").refusal is (
        Refusal.ENDPOINT_NOT_ALLOWED
    )


def test_the_path_is_matched_as_the_upstream_decodes_it() -> None:
    assert normalise_path("/v1/chat/completion%73") == "/v1/chat/completions"
    assert policy().endpoint("/v1/chat/completion%73") == "/v1/chat/completions"


def test_split_target_keeps_the_raw_query() -> None:
    assert split_target("/v1/models?a=%20b&c=d?e") == ("/v1/models", "a=%20b&c=d?e")
    assert split_target("/v1/models") == ("/v1/models", "")


# --- methods, headers, origins -------------------------------------------------------------


def test_methods_outside_the_list_are_refused_with_405() -> None:
    assert refusal_of(policy().method, "PUT").refusal is Refusal.METHOD_NOT_ALLOWED
    policy().method("POST")


def test_an_empty_method_list_allows_every_method() -> None:
    policy(allowed_methods=()).method("PATCH")


def test_a_missing_required_header_is_refused_with_400_naming_it() -> None:
    exc = refusal_of(policy(required_headers=("X-Team",)).headers, CIMultiDict())
    assert exc.refusal is Refusal.HEADER_REQUIRED
    assert "X-Team" in exc.message
    policy(required_headers=("X-Team",)).headers(CIMultiDict({"x-team": "a"}))


def test_a_required_origin_header_has_its_own_refusal() -> None:
    exc = refusal_of(policy(required_headers=("origin",)).headers, CIMultiDict())
    assert exc.refusal is Refusal.ORIGIN_REQUIRED


def test_an_origin_not_listed_is_refused_with_403() -> None:
    p = policy(allowed_origins=("https://app.example",))
    assert refusal_of(p.headers, CIMultiDict({"Origin": "https://evil.example"})).refusal is (
        Refusal.ORIGIN_NOT_ALLOWED
    )
    p.headers(CIMultiDict({"Origin": "https://app.example"}))
    p.headers(CIMultiDict())  # no Origin: not a browser, nothing to check


def test_any_origin_passes_when_no_origins_are_listed() -> None:
    policy().headers(CIMultiDict({"Origin": "https://anything.example"}))


def test_preflight_echoes_the_origin_and_requested_headers() -> None:
    headers = policy(allowed_methods=("GET", "POST")).preflight_headers(
        CIMultiDict(
            {
                "Origin": "https://app.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type",
            }
        )
    )
    assert headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert headers["Access-Control-Allow-Methods"] == "GET, POST"
    assert headers["Access-Control-Allow-Headers"] == "authorization, content-type"
    assert headers["Access-Control-Max-Age"] == "86400"
    assert "X-Request-ID" in headers["Access-Control-Expose-Headers"]


def test_preflight_does_not_echo_malformed_requested_headers() -> None:
    headers = policy().preflight_headers(
        CIMultiDict({"Origin": "https://a.example", "Access-Control-Request-Headers": "x\r\nSet-Cookie: a=b"})
    )
    assert headers["Access-Control-Allow-Headers"] == "Authorization, Content-Type, X-Request-ID"


# --- body ------------------------------------------------------------------------------


def test_a_declared_body_over_the_limit_is_refused_with_413() -> None:
    p = policy(max_body_bytes=100)
    assert refusal_of(p.body_size, 101).refusal is Refusal.BODY_TOO_LARGE
    p.body_size(100)
    p.body_size(None)


WHITELIST = {"model": ("gpt-4o", "gpt-4o-*", "o4-mini"), "temperature": ("0", "0.*", "1")}


@pytest.mark.parametrize(
    "body",
    [
        b'{"model": "gpt-4o", "messages": []}',
        b'{"model": "gpt-4o-mini"}',
        b'{"model": "o4-mini", "temperature": 0.7}',
        b'{"temperature": 1}',
        b'{"messages": [{"role": "user", "content": "model: gpt-3.5"}]}',  # not top level
        b'[{"model": "gpt-3.5"}]',  # not an object: nothing to whitelist
        b'{"messages": [{"content": "caf\\u00e9"}], "model": "gpt-4o"}',  # escapes, key once
    ],
)
def test_whitelisted_values_pass(body: bytes) -> None:
    policy(param_whitelist=WHITELIST).params(body, "application/json")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b'{"model": "gpt-3.5-turbo"}', "model"),
        (b'{"model": "gpt-4o2"}', "model"),
        (b'{"model": "GPT-4O"}', "model"),  # globs are case-sensitive
        (b'{"model": "o4-mini", "temperature": 2}', "temperature"),
        (b'{"model": ["gpt-4o", "gpt-5"]}', "model"),
        (b'{"model": []}', "model"),
        (b'{"model": null}', "model"),
        (b'{"model": "gpt-4o", "model": "gpt-5"}', "model"),  # parsers disagree on which wins
        (b'{"mod\\u0065l": "gpt-5", "model": "gpt-4o"}', "model"),
    ],
)
def test_values_outside_the_whitelist_are_refused_with_400_naming_the_param(body: bytes, param: str) -> None:
    exc = refusal_of(policy(param_whitelist=WHITELIST).params, body, "application/json")
    assert exc.refusal is Refusal.PARAM_NOT_ALLOWED
    assert exc.param == param
    assert f"'{param}'" in exc.message


def test_invalid_json_declared_as_json_is_refused_when_params_are_checked() -> None:
    exc = refusal_of(policy(param_whitelist=WHITELIST).params, b'{"model": "gpt-5"', "application/json")
    assert exc.refusal is Refusal.BAD_REQUEST


def test_invalid_utf8_inside_a_json_string_is_invalid_json_not_a_crash() -> None:
    body = b'{"model": "gpt-5", "user": "\xff"}'
    exc = refusal_of(policy(param_whitelist=WHITELIST).params, body, "application/json")
    assert (exc.refusal, exc.message) == (Refusal.BAD_REQUEST, "Request body is not valid JSON")
    assert policy(param_whitelist=WHITELIST).params(body, "text/plain") is None  # not JSON for anybody


@pytest.mark.parametrize("content_type", ["application/json", "text/plain", ""])
@pytest.mark.parametrize(
    "body",
    [
        b'{"model":"gpt-4o","x":' + b"[" * 1000 + b"]" * 1000 + b"}",
        b'{"x":' + b'{"a":' * 1000 + b"1" + b"}" * 1000 + b',"model":"gpt-5"}',  # hiding what follows
        b'{"model":"gpt-4o","model":' + b"[" * 5000 + b"]" * 5000 + b"}",
    ],
)
def test_json_nested_too_deeply_to_check_is_refused_with_400_whatever_its_declared_type(
    body: bytes, content_type: str
) -> None:
    exc = refusal_of(policy(param_whitelist=WHITELIST).params, body, content_type)
    assert (exc.refusal, exc.message) == (Refusal.BAD_REQUEST, "Request body is nested too deeply")


def test_a_whitelisted_value_nested_near_the_decoders_limit_is_refused_not_a_crash() -> None:
    for depth in range(900, 1001):  # somewhere here decoding passes and re-encoding the value does not
        exc = refusal_of(
            policy(param_whitelist=WHITELIST).params, b'{"model":' + b"[" * depth + b"]" * depth + b"}", ""
        )
        assert exc.refusal in (Refusal.PARAM_NOT_ALLOWED, Refusal.BAD_REQUEST)


@pytest.mark.parametrize(
    ("content_type", "inspected"),
    [
        ("application/json", True),
        ("application/json; charset=utf-8", True),
        ("Application/JSON", True),
        ("application/merge-patch+json", True),
        ("", True),  # untyped bodies may still be read as JSON by the upstream
        ("text/plain", True),
        ("multipart/form-data; boundary=x", False),
        ("application/octet-stream", False),
    ],
)
def test_which_bodies_the_whitelist_inspects(content_type: str, inspected: bool) -> None:
    assert policy(param_whitelist=WHITELIST).inspects_body(content_type) is inspected
    assert policy().inspects_body(content_type) is False  # no whitelist: never read for params
