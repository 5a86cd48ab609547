"""The management API's wire shapes: obfuscation, and decode errors that name the field."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
import pytest

from llmproxy.errors import ProxyError, Refusal
from llmproxy.manage.schemas import (
    AuditFilter,
    ProjectCreate,
    ProjectUpdate,
    TokenCreate,
    TokenUpdate,
    decode_body,
    decode_query,
    field_of,
)
from llmproxy.manage.views import looks_obfuscated, obfuscate_api_key, project_out
from llmproxy.store.base import Project


@pytest.mark.parametrize(
    ("key", "shown"),
    [
        ("sk-proj-abcdefghijklmnopWXYZ", "sk-…WXYZ"),
        ("sk-123456789", "sk-…6789"),
        ("sk-12345678", "…"),
        ("short", "…"),
        ("", "…"),
    ],
)
def test_an_api_key_shows_its_first_3_and_last_4_characters_at_most(key: str, shown: str) -> None:
    assert obfuscate_api_key(key) == shown


def test_a_project_as_shown_never_holds_its_key() -> None:
    now = datetime(2030, 1, 1, tzinfo=UTC)
    key = "sk-live-0123456789abcdef"
    project = Project(id="p", name="n", api_key=key, created_at=now, updated_at=now)
    encoded = msgspec.json.encode(project_out(project))
    assert key.encode() not in encoded
    assert b'"api_key":"sk-\xe2\x80\xa6cdef"' in encoded


@pytest.mark.parametrize("key", ["sk-…WXYZ", "sk-abcdefgh...WXYZ", "sk-****WXYZ"])
def test_an_obfuscated_key_is_recognised(key: str) -> None:
    assert looks_obfuscated(key)


def test_a_real_key_is_not_taken_for_an_obfuscated_one() -> None:
    assert not looks_obfuscated("sk-proj-abc_def-123")


@pytest.mark.parametrize(
    ("body", "kind", "param"),
    [
        (b'{"name": "a"}', ProjectCreate, "api_key"),
        (b'{"name": "a", "api_key": "k", "extra": 1}', ProjectCreate, "extra"),
        (
            b'{"project_id": "00000000-0000-4000-8000-000000000000", "max_requests": "5"}',
            TokenCreate,
            "max_requests",
        ),
        (b'{"expires_at": "2030-01-01T00:00:00"}', TokenUpdate, "expires_at"),
        (b'{"is_active": null}', ProjectUpdate, "is_active"),
        (b"[]", ProjectCreate, None),
    ],
)
def test_a_body_that_does_not_fit_is_422_naming_the_field(body: bytes, kind: type, param: str | None) -> None:
    with pytest.raises(ProxyError) as refused:
        decode_body(body, kind)
    assert refused.value.refusal is Refusal.INVALID_FIELD
    assert refused.value.param == param


def test_a_body_that_is_not_json_is_400_invalid_json() -> None:
    with pytest.raises(ProxyError) as refused:
        decode_body(b"{'name': 'a'}", ProjectCreate)
    assert refused.value.refusal is Refusal.INVALID_JSON


def test_absent_and_null_differ_in_a_patch() -> None:
    patch = decode_body(b'{"upstream_base_url": null}', ProjectUpdate)
    assert patch.upstream_base_url is None
    assert patch.name is msgspec.UNSET


class Inner(msgspec.Struct, forbid_unknown_fields=True):
    n: int


class Outer(msgspec.Struct):
    inner: list[Inner]


def test_a_nested_field_path_is_dotted() -> None:
    with pytest.raises(msgspec.ValidationError) as wrong_type:
        msgspec.json.decode(b'{"inner": [{"n": "x"}]}', type=Outer)
    assert field_of(wrong_type.value) == "inner[0].n"
    with pytest.raises(msgspec.ValidationError) as unknown:
        msgspec.json.decode(b'{"inner": [{"n": 1, "m": 2}]}', type=Outer)
    assert field_of(unknown.value) == "inner[0].m"


def test_query_strings_are_coerced_to_their_types() -> None:
    query = decode_query({"page": "3", "page_size": "10", "since": "2030-01-01T00:00:00Z"}, AuditFilter)
    assert (query.page, query.page_size, query.since) == (3, 10, datetime(2030, 1, 1, tzinfo=UTC))
