"""The brake on guessing the management token, on a fake clock: the window, the exact wait, the bounds."""

from __future__ import annotations

import pytest

from llmproxy.auth.throttle import AuthThrottle, client_key


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_an_address_is_held_back_after_five_failures_within_a_minute() -> None:
    clock = Clock()
    throttle = AuthThrottle(max_failures=5, window=60, clock=clock)
    for _ in range(4):
        assert throttle.failed("10.0.0.1") is None
        clock.now += 1
    assert throttle.retry_after("10.0.0.1") is None
    assert throttle.failed("10.0.0.1") == 56  # this failure locked it: until the first leaves the window
    assert throttle.retry_after("10.0.0.1") == 56
    assert throttle.retry_after("10.0.0.2") is None  # others are not held back
    clock.now += 55.5
    assert throttle.retry_after("10.0.0.1") == 1  # rounded up, never 0
    clock.now += 0.5
    assert throttle.retry_after("10.0.0.1") is None


def test_a_success_clears_the_failures_of_an_address() -> None:
    throttle = AuthThrottle(max_failures=2)
    throttle.failed("10.0.0.1")
    throttle.succeeded("10.0.0.1")
    throttle.failed("10.0.0.1")
    assert throttle.retry_after("10.0.0.1") is None


def test_the_throttle_remembers_a_bounded_number_of_addresses() -> None:
    throttle = AuthThrottle(max_failures=1, max_clients=3)
    for n in range(5):
        throttle.failed(f"10.0.0.{n}")
    assert throttle.retry_after("10.0.0.0") is None  # the stalest were forgotten
    assert all(throttle.retry_after(f"10.0.0.{n}") is not None for n in (2, 3, 4))


def test_addresses_of_one_ipv6_64_share_one_count() -> None:
    throttle = AuthThrottle(max_failures=2)
    throttle.failed("2001:db8:1:2::1")
    assert throttle.failed("2001:db8:1:2:ffff:ffff:ffff:ffff") is not None
    assert throttle.retry_after("2001:db8:1:2::abcd") is not None
    assert throttle.retry_after("2001:db8:1:3::1") is None


@pytest.mark.parametrize(
    ("address", "key"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("::ffff:10.1.2.3", "10.1.2.3"),
        ("2001:db8::1", "2001:db8::/64"),
        ("fe80::1%eth0", "fe80::/64"),
        (None, "unknown"),
        ("", "unknown"),
        ("not-an-ip", "not-an-ip"),
    ],
)
def test_failures_are_counted_per_ipv4_address_or_ipv6_64(address: str | None, key: str) -> None:
    assert client_key(address) == key
