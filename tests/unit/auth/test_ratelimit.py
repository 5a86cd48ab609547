"""The per-token sliding-window log, driven by an explicit clock."""

from __future__ import annotations

from llmproxy.auth.ratelimit import GRAIN, RateLimiter

T0 = 1_700_000_040.0


def test_requests_up_to_the_limit_pass_and_the_next_is_refused() -> None:
    limiter = RateLimiter()
    results = [limiter.hit("t", 3, T0 + i) for i in range(4)]
    assert [r.allowed for r in results] == [True, True, True, False]
    assert [r.remaining for r in results] == [2, 1, 0, 0]


def test_a_2_per_minute_token_waits_exactly_until_its_oldest_request_is_a_minute_old() -> None:
    # The fixed-minute estimate this replaces answered 90 - (seconds into the minute): up to 90 s.
    limiter = RateLimiter()
    for start in (T0, T0 + 29.5, T0 + 59.9):
        limiter.hit(str(start), 2, start)
        limiter.hit(str(start), 2, start + 1)
        verdict = limiter.hit(str(start), 2, start + 10)
        assert (verdict.allowed, verdict.retry_after) == (False, 50)
        assert abs(verdict.reset - 50.0) < 1e-6


def test_retry_after_never_exceeds_the_window() -> None:
    limiter = RateLimiter()
    for i in range(100):
        limiter.hit("t", 1_000, T0 + i * 0.001)
    verdicts = [limiter.hit("t", 100, T0 + 0.2 + i * 0.1) for i in range(50)]
    assert all(not v.allowed and 1 <= v.retry_after <= 60 for v in verdicts)


def test_a_refused_request_is_allowed_once_retry_after_has_passed() -> None:
    limiter = RateLimiter()
    for i in range(3):
        limiter.hit("t", 3, T0 + i)
    verdict = limiter.hit("t", 3, T0 + 10)
    assert (verdict.allowed, verdict.retry_after) == (False, 50)
    assert limiter.hit("t", 3, T0 + 10 + verdict.retry_after - 1).allowed is False
    assert limiter.hit("t", 3, T0 + 10 + verdict.retry_after).allowed is True


def test_no_sixty_second_span_holds_more_than_the_limit() -> None:
    limiter = RateLimiter()
    allowed = [T0 + i * 0.7 for i in range(400) if limiter.hit("t", 10, T0 + i * 0.7).allowed]
    for i, start in enumerate(allowed):
        assert len([t for t in allowed[i:] if t < start + 60]) <= 10


def test_requests_close_together_share_an_entry_erring_only_by_the_grain() -> None:
    limiter = RateLimiter()
    for i in range(5):
        limiter.hit("t", 5, T0 + i * GRAIN / 10)
    verdict = limiter.hit("t", 5, T0 + 30)
    assert not verdict.allowed and 30 <= verdict.reset < 30 + GRAIN


def test_memory_per_token_is_bounded_whatever_its_limit() -> None:
    limiter = RateLimiter()
    for i in range(20_000):
        limiter.hit("t", 1_000_000, T0 + i * 0.003)
    assert limiter.entries("t") <= 60 / GRAIN + 1


def test_refused_requests_are_not_counted() -> None:
    limiter = RateLimiter()
    limiter.hit("t", 1, T0)
    for _ in range(100):
        assert not limiter.hit("t", 1, T0 + 1).allowed
    assert limiter.hit("t", 1, T0 + 60).allowed


def test_tokens_are_limited_independently() -> None:
    limiter = RateLimiter()
    assert limiter.hit("a", 1, T0).allowed
    assert limiter.hit("b", 1, T0).allowed
    assert limiter.hit("a", 1, T0).allowed is False


def test_a_limit_of_zero_refuses_everything() -> None:
    verdict = RateLimiter().hit("t", 0, T0)
    assert (verdict.allowed, verdict.retry_after) == (False, 60)


def test_the_injected_clock_is_used_when_no_time_is_given() -> None:
    now = [T0]
    limiter = RateLimiter(clock=lambda: now[0])
    assert limiter.hit("t", 1).allowed
    assert limiter.hit("t", 1).allowed is False
    now[0] += 60
    assert limiter.hit("t", 1).allowed


def test_prune_drops_idle_keys() -> None:
    limiter = RateLimiter()
    limiter.hit("old", 5, T0)
    limiter.hit("new", 5, T0 + 150)
    limiter.prune(T0 + 150)
    assert len(limiter) == 1
    assert limiter.hit("new", 1, T0 + 150).allowed is False  # "new" kept its count


def test_key_count_stays_bounded() -> None:
    limiter = RateLimiter(max_keys=50)
    for i in range(1000):
        limiter.hit(f"t{i}", 5, T0)
    assert len(limiter) <= 50


def test_headers_say_limit_remaining_and_when_a_slot_frees() -> None:
    limiter = RateLimiter()
    limiter.hit("t", 3, T0)
    verdict = limiter.hit("t", 3, T0 + 0.5)
    assert dict(verdict.headers()) == {
        "x-ratelimit-limit-requests": "3",
        "x-ratelimit-remaining-requests": "1",
        "x-ratelimit-reset-requests": "59.5s",
    }
    limiter.hit("t", 3, T0 + 59.99)
    refused = limiter.hit("t", 3, T0 + 59.995)
    assert dict(refused.headers())["x-ratelimit-reset-requests"] == "5ms"


def test_headers_go_under_our_prefix_when_the_upstream_sent_its_own() -> None:
    verdict = RateLimiter().hit("t", 3, T0)
    upstream = {"x-ratelimit-limit-requests": "10000", "Content-Type": "application/json"}
    assert [name for name, _ in verdict.headers(upstream)] == [
        "x-llmproxy-ratelimit-limit-requests",
        "x-llmproxy-ratelimit-remaining-requests",
        "x-llmproxy-ratelimit-reset-requests",
    ]
