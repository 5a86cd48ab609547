"""The command line's contract (SPEC §2): bad input exits 2 with one line, unreachable peers exit 1."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.e2e.conftest import LLM_PROXY, free_port


def run(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    return subprocess.run(
        [LLM_PROXY, *args], env={**base, **(env or {})}, capture_output=True, text=True, timeout=timeout
    )


def test_an_unknown_flag_is_one_line_on_stderr_and_exit_2() -> None:
    r = run("server", "--no-such-flag")
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "--no-such-flag" in r.stderr


def test_a_bad_setting_is_one_line_on_stderr_and_exit_2() -> None:
    r = run("server", env={"MANAGEMENT_TOKEN": "x" * 20, "REDIS_STREAM_BLOCK_TIME": "forever"})
    assert (r.returncode, r.stderr) == (2, "llm-proxy: REDIS_STREAM_BLOCK_TIME (environment): not a duration "
                                           "(use 500ms, 30s, 5m, 1h or seconds): 'forever'\n")  # fmt: skip


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:99999",
        "http://[::1",
        "http://127.0.0.1:abc",
        "http://:80",
        "ftp://x",
        "http://127.0.0.1:0",
    ],
)
def test_an_upstream_url_the_proxy_cannot_dial_is_one_line_on_stderr_and_exit_2(
    tmp_path: Path, url: str
) -> None:
    env = {
        "MANAGEMENT_TOKEN": "x" * 20,
        "UPSTREAM_BASE_URL": url,
        "DATABASE_URL": f"sqlite:///{tmp_path}/db",  # should it start after all: nothing outside tmp_path
        "AUDIT_LOG_FILE": str(tmp_path / "audit.log"),
        "LISTEN_ADDR": f"127.0.0.1:{free_port()}",
    }
    r = run("server", env=env, timeout=10)
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith("llm-proxy: UPSTREAM_BASE_URL (environment): ")
    assert r.stderr.rstrip("\n").endswith(repr(url))


def test_the_server_refuses_to_start_without_a_management_token() -> None:
    r = run("server")
    assert r.returncode == 2
    assert r.stderr.startswith("llm-proxy: MANAGEMENT_TOKEN is required")


def test_no_command_means_server() -> None:
    r = run()
    assert r.returncode == 2
    assert r.stderr.startswith("llm-proxy: MANAGEMENT_TOKEN is required")


def test_an_unreachable_postgresql_at_start_exits_1_naming_the_address(tmp_path: Path) -> None:
    port = free_port()
    r = run("server", env={
        "MANAGEMENT_TOKEN": "x" * 20, "LISTEN_ADDR": f"127.0.0.1:{free_port()}",
        "DATABASE_URL": f"postgresql://postgres:hunter2@127.0.0.1:{port}/test",
        "AUDIT_LOG_FILE": str(tmp_path / "audit.log"),
    })  # fmt: skip
    assert r.returncode == 1
    assert f"127.0.0.1:{port}" in r.stderr and "hunter2" not in r.stderr


def test_an_unreachable_redis_at_start_exits_1_naming_the_address(tmp_path: Path) -> None:
    port = free_port()
    r = run("server", env={
        "MANAGEMENT_TOKEN": "x" * 20, "LISTEN_ADDR": f"127.0.0.1:{free_port()}",
        "DATABASE_URL": f"sqlite:///{tmp_path}/db", "AUDIT_LOG_FILE": str(tmp_path / "audit.log"),
        "LLM_PROXY_EVENT_BUS": "redis-streams", "REDIS_ADDR": f"127.0.0.1:{port}",
    })  # fmt: skip
    assert r.returncode == 1
    assert f"127.0.0.1:{port}" in r.stderr


def test_migrate_creates_the_sqlite_database_and_is_idempotent(tmp_path: Path) -> None:
    env = {"DATABASE_URL": f"sqlite:///{tmp_path}/new/llm-proxy.db"}
    first = run("migrate", env=env)
    assert first.returncode == 0, first.stderr
    assert (tmp_path / "new" / "llm-proxy.db").exists()
    second = run("migrate", env=env)
    assert (second.returncode, second.stdout) == (0, "database is up to date\n")


def test_python_dash_m_llmproxy_is_the_same_command() -> None:
    import sys

    r = subprocess.run(
        [sys.executable, "-m", "llmproxy", "--version"], capture_output=True, text=True, timeout=30
    )
    assert r.returncode == 0 and r.stdout.startswith("llm-proxy ")
