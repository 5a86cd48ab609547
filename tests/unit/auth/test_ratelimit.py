"""The per-token sliding-window limiter, driven by an explicit clock."""

from __future__ import annotations

from llmproxy.auth.ratelimit import RateLimiter

MINUTE_START = 1_700_000_040.0  # a multiple of 60: the start of a fixed minute


def test_requests_up_to_the_limit_pass_and_the_next_is_refused() -> None:
    limiter = RateLimiter()
    results = [limiter.hit("t", 3, MINUTE_START + i) for i in range(4)]
    assert results[:3] == [(True, 0)] * 3
    assert results[3][0] is False


def test_retry_after_within_the_first_minute_is_until_the_next_minute_plus_its_weight() -> None:
    limiter = RateLimiter()
    for _ in range(3):
        limiter.hit("t", 3, MINUTE_START)
    # 3 requests at :00 of a minute, refused at :10. The next minute starts in 50 s with the 3 weighing
    # 3*(60-t)/60; one more fits when that is <= 2, i.e. t >= 20 s into it: 70 s in all.
    assert limiter.hit("t", 3, MINUTE_START + 10) == (False, 70)


def test_a_refused_request_is_allowed_once_retry_after_has_passed() -> None:
    limiter = RateLimiter()
    for _ in range(3):
        limiter.hit("t", 3, MINUTE_START)
    allowed, retry_after = limiter.hit("t", 3, MINUTE_START + 10)
    assert not allowed
    assert limiter.hit("t", 3, MINUTE_START + 10 + retry_after - 1)[0] is False
    assert limiter.hit("t", 3, MINUTE_START + 10 + retry_after) == (True, 0)


def test_the_previous_minute_weighs_in_proportionally() -> None:
    limiter = RateLimiter()
    for _ in range(4):
        assert limiter.hit("t", 4, MINUTE_START + 30)[0]
    # 15 s into the next minute the 4 weigh 4*45/60 = 3: exactly one more fits.
    assert limiter.hit("t", 4, MINUTE_START + 75) == (True, 0)
    allowed, retry_after = limiter.hit("t", 4, MINUTE_START + 75)
    # now 3 + 1 = 4: needs 4*(60-t)/60 + 1 + 1 <= 4, t >= 30 s, i.e. 15 s from now
    assert (allowed, retry_after) == (False, 15)


def test_refused_requests_are_not_counted() -> None:
    limiter = RateLimiter()
    limiter.hit("t", 1, MINUTE_START)
    for _ in range(100):
        assert not limiter.hit("t", 1, MINUTE_START + 1)[0]
    # two minutes later nothing of the first minute is left, however much was refused
    assert limiter.hit("t", 1, MINUTE_START + 120) == (True, 0)


def test_an_idle_minute_clears_the_window() -> None:
    limiter = RateLimiter()
    for _ in range(5):
        limiter.hit("t", 5, MINUTE_START)
    assert limiter.hit("t", 5, MINUTE_START + 121) == (True, 0)


def test_tokens_are_limited_independently() -> None:
    limiter = RateLimiter()
    assert limiter.hit("a", 1, MINUTE_START) == (True, 0)
    assert limiter.hit("b", 1, MINUTE_START) == (True, 0)
    assert limiter.hit("a", 1, MINUTE_START)[0] is False


def test_a_limit_of_zero_refuses_everything() -> None:
    assert RateLimiter().hit("t", 0, MINUTE_START) == (False, 60)


def test_the_injected_clock_is_used_when_no_time_is_given() -> None:
    now = [MINUTE_START]
    limiter = RateLimiter(clock=lambda: now[0])
    assert limiter.hit("t", 1) == (True, 0)
    assert limiter.hit("t", 1)[0] is False
    now[0] += 120
    assert limiter.hit("t", 1) == (True, 0)


def test_prune_drops_idle_keys() -> None:
    limiter = RateLimiter()
    limiter.hit("old", 5, MINUTE_START)
    limiter.hit("new", 5, MINUTE_START + 150)
    limiter.prune(MINUTE_START + 150)
    assert len(limiter) == 1
    assert limiter.hit("new", 1, MINUTE_START + 150)[0] is False  # "new" kept its count


def test_key_count_stays_bounded() -> None:
    limiter = RateLimiter(max_keys=50)
    for i in range(1000):
        limiter.hit(f"t{i}", 5, MINUTE_START)
    assert len(limiter) <= 50
