"""backends.base and registry: HTTP answers turned into DeliveryErrors, the id window, name → backend."""

from __future__ import annotations

import pytest

from llmproxy.dispatch.backends.base import DeliveryError, RecentIds, error_for_exception, error_for_status
from llmproxy.dispatch.backends.file import FileBackend
from llmproxy.dispatch.backends.helicone import HeliconeBackend
from llmproxy.dispatch.backends.lunary import LunaryBackend
from llmproxy.dispatch.registry import make_backend


def test_a_429_is_transient_with_its_retry_after() -> None:
    error = error_for_status("lunary", 429, {"Retry-After": "2"}, b"Sometimes You Just Have to Slow Down.")
    assert (error.transient, error.retry_after, error.whole_batch) == (True, 2.0, False)
    assert error.message == "lunary: HTTP 429: Sometimes You Just Have to Slow Down."


def test_a_400_is_permanent_and_may_concern_single_events() -> None:
    error = error_for_status("helicone", 400, {"Retry-After": "2"}, b'{"error":"Invalid timing"}')
    assert (error.transient, error.retry_after, error.whole_batch) == (False, None, False)


@pytest.mark.parametrize("status", [401, 402, 403, 404])
def test_auth_and_endpoint_errors_concern_the_whole_batch(status: int) -> None:
    error = error_for_status("lunary", status, {}, b"")
    assert not error.transient and error.whole_batch
    assert error.message == f"lunary: HTTP {status}"


def test_a_secret_echoed_in_an_error_body_is_redacted() -> None:
    error = error_for_status("helicone", 401, {}, b"bad key sk-helicone-abcdefghijklmnopqrstuv")
    assert "abcdefghijklmnop" not in error.message


def test_exceptions_become_delivery_errors_by_kind() -> None:
    assert error_for_exception("x", ConnectionRefusedError("refused")).transient
    assert not error_for_exception("x", ValueError("bad timestamp")).transient
    original = DeliveryError("kept", transient=False)
    assert error_for_exception("x", original) is original


def test_recent_ids_forget_the_oldest_beyond_capacity() -> None:
    ids = RecentIds(3, ["a", "b"])
    ids.add("b")
    ids.add("c")
    ids.add("d")
    assert ("a" in ids, "b" in ids, "c" in ids, "d" in ids) == (False, True, True, True)
    assert len(ids) == 3


def test_the_registry_builds_each_service_by_name() -> None:
    assert isinstance(make_backend("file", "/tmp/llmproxy-test-never-written.jsonl"), FileBackend)
    lunary = make_backend("lunary", "", "0b6a1e2c-3d4e-4f5a-8b9c-0d1e2f3a4b5c")
    assert isinstance(lunary, LunaryBackend) and lunary.url == "https://api.lunary.ai/v1/runs/ingest"
    helicone = make_backend("helicone", "http://127.0.0.1:9/", "sk-helicone-x")
    assert isinstance(helicone, HeliconeBackend) and helicone.url == "http://127.0.0.1:9/custom/v1/log"


def test_an_unknown_service_is_refused_naming_the_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown dispatcher service 'kafka'; known: file, helicone, lunary"):
        make_backend("kafka")


def test_the_file_service_needs_a_path() -> None:
    with pytest.raises(ValueError, match="needs a path"):
        make_backend("file", "")
