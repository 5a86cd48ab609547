"""`llm-proxy dispatcher` as an operator starts it: mistakes and outages in one line, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.conftest import free_port
from tests.e2e.test_cli import run


def streams_env(tmp_path: Path, redis_port: int) -> dict[str, str]:
    return {
        "LLM_PROXY_EVENT_BUS": "redis-streams",
        "REDIS_ADDR": f"127.0.0.1:{redis_port}",
        "FILE_EVENT_LOG": str(tmp_path / "events.jsonl"),
    }


@pytest.mark.parametrize("workers", ["1", "2"])
def test_an_unreachable_redis_is_one_line_naming_the_address_and_exit_1(tmp_path: Path, workers: str) -> None:
    port = free_port()
    r = run("dispatcher", "--workers", workers, env=streams_env(tmp_path, port), timeout=30)
    assert r.returncode == 1, r.stderr
    assert r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith("llm-proxy: ") and f"127.0.0.1:{port}" in r.stderr
    assert "Traceback" not in r.stderr + r.stdout


@pytest.mark.parametrize("bus", ["in-memory", "redis-streams"])
def test_an_unknown_service_is_named_before_anything_touches_redis(tmp_path: Path, bus: str) -> None:
    env = {**streams_env(tmp_path, free_port()), "LLM_PROXY_EVENT_BUS": bus}
    r = run("dispatcher", "--service", "foo", env=env, timeout=30)
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1, r.stderr
    assert "unknown dispatcher service 'foo'" in r.stderr
    assert "Redis" not in r.stderr and "LLM_PROXY_EVENT_BUS" not in r.stderr
