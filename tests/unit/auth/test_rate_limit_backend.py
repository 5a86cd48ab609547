"""RATE_LIMIT_BACKEND and when Redis counts as configured (the default REDIS_ADDR alone does not)."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmproxy import config
from llmproxy.config_sections import shares_rate_limit, uses_redis
from llmproxy.errors import ConfigError


@pytest.mark.parametrize(
    ("env", "redis_in_use"),
    [
        ({}, False),  # the default localhost:6379 is never tried on its own
        ({"REDIS_ADDR": "localhost:6379"}, True),  # given explicitly, even if equal to the default
        ({"REDIS_ADDR": "10.0.0.5:6379"}, True),
        ({"LLM_PROXY_EVENT_BUS": "redis-streams"}, True),
        ({"LLM_PROXY_EVENT_BUS": "redis"}, True),
        ({"HTTP_CACHE_ENABLED": "true", "HTTP_CACHE_BACKEND": "redis"}, True),
        ({"HTTP_CACHE_ENABLED": "false", "HTTP_CACHE_BACKEND": "redis"}, False),
        ({"HTTP_CACHE_ENABLED": "true"}, False),
    ],
)
def test_auto_shares_the_limit_when_redis_is_in_use(env: dict[str, str], redis_in_use: bool) -> None:
    settings = config.load(env)
    assert settings.auth.rate_limit_backend == "auto"
    assert uses_redis(settings) is redis_in_use
    assert shares_rate_limit(settings) is redis_in_use


def test_local_never_shares_and_redis_always_does() -> None:
    assert not shares_rate_limit(config.load({"RATE_LIMIT_BACKEND": "local", "REDIS_ADDR": "10.0.0.5:6379"}))
    assert shares_rate_limit(config.load({"RATE_LIMIT_BACKEND": "redis"}))


def test_redis_addr_counts_as_given_from_yaml_or_a_flag_too(tmp_path: Path) -> None:
    yaml = tmp_path / "llm-proxy.yaml"
    yaml.write_text("REDIS_ADDR: 127.0.0.1:6379\n")
    assert config.load({}, config_file=str(yaml)).redis.addr_given
    assert config.load({}, overrides={"REDIS_ADDR": "127.0.0.1:6379"}).redis.addr_given
    assert not config.load({}, overrides={"REDIS_ADDR": None}).redis.addr_given


def test_an_unknown_backend_is_refused_by_name() -> None:
    with pytest.raises(
        ConfigError, match=r"^RATE_LIMIT_BACKEND \(environment\): must be one of auto, local, redis"
    ):
        config.load({"RATE_LIMIT_BACKEND": "memcached"})
