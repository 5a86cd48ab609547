"""retry.classify and retry.backoff_s: which failures are retried, and how long the dispatcher waits."""

from __future__ import annotations

import email.utils

import aiohttp
import pytest

from llmproxy.dispatch.retry import backoff_s, classify, parse_retry_after

NOW = 1_767_268_800.0


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503, 504, 599])
def test_timeouts_conflicts_rate_limits_and_server_errors_are_transient(status: int) -> None:
    assert classify(status, None) == "transient"


@pytest.mark.parametrize("status", [400, 401, 402, 403, 404, 405, 413, 422])
def test_other_client_errors_are_permanent(status: int) -> None:
    assert classify(status, None) == "permanent"


@pytest.mark.parametrize(
    "exc",
    [
        TimeoutError(),
        ConnectionResetError(),
        aiohttp.ServerDisconnectedError(),
        aiohttp.ClientConnectionError("refused"),
        aiohttp.ClientPayloadError("cut"),
    ],
)
def test_network_errors_and_timeouts_are_transient(exc: BaseException) -> None:
    assert classify(None, exc) == "transient"


def test_a_malformed_endpoint_and_a_bug_are_permanent() -> None:
    assert classify(None, aiohttp.InvalidURL("not a url")) == "permanent"
    assert classify(None, KeyError("model")) == "permanent"


def test_a_client_response_error_is_classified_by_its_status() -> None:
    def error(status: int) -> aiohttp.ClientResponseError:
        return aiohttp.ClientResponseError(None, (), status=status)  # type: ignore[arg-type]

    assert classify(None, error(503)) == "transient"
    assert classify(None, error(400)) == "permanent"


def test_backoff_grows_exponentially_with_full_jitter() -> None:
    assert [backoff_s(n, rng=lambda: 1.0) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 4.0]
    assert [backoff_s(n, rng=lambda: 0.5) for n in (1, 2, 3)] == [0.25, 0.5, 1.0]
    assert backoff_s(5, rng=lambda: 0.0) == 0.0


def test_backoff_stays_within_zero_and_the_exponential_ceiling() -> None:
    for attempt in range(1, 12):
        ceiling = min(30.0, 0.5 * 2 ** (attempt - 1))
        assert 0.0 <= backoff_s(attempt) <= ceiling


def test_backoff_is_capped_even_for_huge_attempt_numbers() -> None:
    assert backoff_s(10, rng=lambda: 1.0) == 30.0
    assert backoff_s(10_000, rng=lambda: 1.0, cap=7.0) == 7.0


def test_retry_after_seconds_is_a_floor_for_the_delay() -> None:
    assert backoff_s(1, "3", rng=lambda: 0.1) == 3.0
    assert backoff_s(1, 2.5, rng=lambda: 0.1) == 2.5
    assert backoff_s(8, "1", rng=lambda: 1.0) == 30.0  # a longer backoff wins over a short Retry-After


def test_retry_after_http_date_is_a_floor_for_the_delay() -> None:
    in_12s = email.utils.formatdate(NOW + 12, usegmt=True)
    assert backoff_s(1, in_12s, rng=lambda: 0.0, now=NOW) == pytest.approx(12.0)


def test_retry_after_is_capped() -> None:
    assert backoff_s(1, "3600", rng=lambda: 0.0) == 30.0


def test_unusable_retry_after_values_are_ignored() -> None:
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None
    assert parse_retry_after("-5") == 0.0
    assert parse_retry_after(email.utils.formatdate(NOW - 60, usegmt=True), now=NOW) == 0.0
    assert backoff_s(1, "soon", rng=lambda: 1.0) == 0.5
