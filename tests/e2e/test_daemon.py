"""The installed `llm-proxy` run for real: --detach, status, stop; and the deployment files
(systemd units, env example, logrotate) checked by the tools that will read them."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from llmproxy import config, daemon

ROOT = Path(__file__).resolve().parents[2]
LLM_PROXY = Path(sys.executable).parent / "llm-proxy"
STARTED = re.compile(r"^started \(pid (\d+)\)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _poll(condition: Callable[[], bool], timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


class Proxy:
    """`llm-proxy` commands against one data directory, port and pid file."""

    def __init__(self, tmp_path: Path) -> None:
        self.dir = tmp_path
        self.port = _free_port()
        self.pid_file = tmp_path / "run" / "llm-proxy.pid"
        self.pid_file.parent.mkdir()
        self.log_file = tmp_path / "llm-proxy.log"
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(tmp_path),
            "LANG": "C.UTF-8",
            "MANAGEMENT_TOKEN": "e2e-management-token-0123456789",
            "DATABASE_URL": f"sqlite:///{tmp_path}/llm-proxy.db",
            "LISTEN_ADDR": f"127.0.0.1:{self.port}",
            "AUDIT_LOG_FILE": str(tmp_path / "audit.log"),
            "LLM_PROXY_EVENT_BUS": "in-memory",
        }
        self.started: list[int] = []

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(LLM_PROXY), *args], cwd=self.dir, env=self.env, capture_output=True, text=True, timeout=90
        )
        if m := STARTED.match(result.stdout):
            self.started.append(int(m.group(1)))
        return result

    def detach(self, *extra: str) -> subprocess.CompletedProcess[str]:
        return self.run(
            "server", "--detach", "--pid-file", str(self.pid_file), "--log-file", str(self.log_file), *extra
        )

    def get(self, path: str) -> tuple[int, bytes]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as response:
            return response.status, response.read()

    def cleanup(self) -> None:
        for pid in self.started:
            if daemon.process_is_ours(pid):
                os.kill(pid, 9)


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[Proxy]:
    if not LLM_PROXY.exists():
        pytest.skip(f"{LLM_PROXY} is not installed (pip install -e .)")
    p = Proxy(tmp_path)
    yield p
    p.cleanup()


# --- --detach / status / stop --------------------------------------------------------------------


def test_detached_server_answers_health_and_stops_on_request(proxy: Proxy) -> None:
    started = proxy.detach()
    assert started.returncode == 0, started.stderr + proxy.log_file.read_text()
    pid = int(STARTED.match(started.stdout).group(1))  # type: ignore[union-attr]
    assert proxy.pid_file.read_text() == f"{pid}\n"

    status = proxy.run("status", "--pid-file", str(proxy.pid_file))
    assert (status.returncode, status.stdout) == (0, f"running (pid {pid})\n")

    code, body = proxy.get("/health")  # serving as soon as --detach returned: no polling
    assert code == 200
    assert json.loads(body)["status"] == "ok"

    stopped = proxy.run("stop", "--pid-file", str(proxy.pid_file))
    assert (stopped.returncode, stopped.stdout) == (0, f"stopped (pid {pid})\n")
    assert not daemon.process_is_ours(pid)
    assert not proxy.pid_file.exists()

    status = proxy.run("status", "--pid-file", str(proxy.pid_file))
    assert (status.returncode, status.stdout) == (3, "not running\n")


def test_detached_server_whose_port_is_taken_exits_1_with_the_reason(proxy: Proxy) -> None:
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", proxy.port))
        squatter.listen()
        result = proxy.detach()
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{proxy.port}" in result.stderr
    assert result.stderr.startswith("llm-proxy: failed to start:")
    assert not proxy.pid_file.exists()


def test_second_detach_with_the_same_pid_file_is_refused(proxy: Proxy) -> None:
    first = proxy.detach()
    assert first.returncode == 0, first.stderr + proxy.log_file.read_text()
    pid = int(STARTED.match(first.stdout).group(1))  # type: ignore[union-attr]

    second = proxy.detach("--listen", f"127.0.0.1:{_free_port()}")
    assert second.returncode == 1
    assert second.stderr == f"llm-proxy: already running (pid {pid})\n"
    assert proxy.get("/health")[0] == 200  # the first one is untouched
    assert proxy.run("stop", "--pid-file", str(proxy.pid_file)).returncode == 0


def test_detach_without_pid_file_is_refused_with_2(proxy: Proxy) -> None:
    result = proxy.run("server", "--detach")
    assert result.returncode == 2
    assert "--pid-file" in result.stderr and result.stderr.count("\n") == 1


def test_stop_and_status_without_a_daemon(proxy: Proxy) -> None:
    status = proxy.run("status", "--pid-file", str(proxy.pid_file))
    assert (status.returncode, status.stdout) == (3, "not running\n")
    stop = proxy.run("stop", "--pid-file", str(proxy.pid_file))
    assert (stop.returncode, stop.stdout) == (0, "not running\n")


def test_a_killed_daemon_leaves_a_stale_pid_file_that_the_next_start_replaces(proxy: Proxy) -> None:
    first = proxy.detach()
    assert first.returncode == 0, first.stderr + proxy.log_file.read_text()
    pid = int(STARTED.match(first.stdout).group(1))  # type: ignore[union-attr]
    os.kill(pid, 9)
    assert _poll(lambda: not daemon.process_is_ours(pid))

    status = proxy.run("status", "--pid-file", str(proxy.pid_file))
    assert status.returncode == 3 and "stale pid file" in status.stdout

    again = proxy.detach()
    assert again.returncode == 0, again.stderr + proxy.log_file.read_text()
    assert proxy.get("/health")[0] == 200
    assert proxy.run("stop", "--pid-file", str(proxy.pid_file)).returncode == 0


# --- deployment files ----------------------------------------------------------------------------


def test_systemd_units_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    if not LLM_PROXY.exists():
        pytest.skip(f"{LLM_PROXY} is not installed")
    # verify insists that ExecStart's binary exists: point it at this checkout's llm-proxy
    units = []
    for name in ("llm-proxy.service", "llm-proxy-dispatcher@.service"):
        text = (ROOT / "systemd" / name).read_text()
        assert "ExecStart=/opt/llm-proxy/venv/bin/llm-proxy " in text
        target = tmp_path / name.replace("@.", "@file.")
        target.write_text(text.replace("/opt/llm-proxy/venv/bin/llm-proxy", str(LLM_PROXY)))
        units.append(str(target))
    result = subprocess.run([analyze, "verify", *units], capture_output=True, text=True, timeout=60)
    # verify exits 0 even for unknown keys or bad values; those are reported against the file
    complaints = [line for line in (result.stdout + result.stderr).splitlines() if "llm-proxy" in line]
    assert result.returncode == 0, result.stderr
    assert complaints == []


def _env_example() -> tuple[dict[str, str], dict[str, str]]:
    """(set, documented): KEY=value lines, and `#KEY=value` lines, of the example env file."""
    assigned: dict[str, str] = {}
    documented: dict[str, str] = {}
    for line in (ROOT / "systemd" / "llm-proxy.env.example").read_text().splitlines():
        if m := re.fullmatch(r"(#?)([A-Z][A-Z0-9_]+)=(.*)", line):
            (documented if m.group(1) else assigned)[m.group(2)] = m.group(3)
    return assigned, documented


def test_env_example_names_every_setting_and_only_real_ones() -> None:
    assigned, documented = _env_example()
    names = set(assigned) | set(documented)
    assert names == set(config._VARS)  # the settings the loader knows


def test_env_example_values_are_accepted_by_the_config_loader() -> None:
    assigned, documented = _env_example()
    settings = config.load(env=assigned)
    assert settings.store.database_url == "sqlite:////var/lib/llm-proxy/llm-proxy.db"
    assert settings.server.management_token == ""  # left empty on purpose: the server refuses to start
    for name, value in documented.items():
        if value and name not in ("API_CONFIG_PATH", "PRICES_PATH"):  # they name files the loader reads
            config.load(env={**assigned, name: value})  # raises ConfigError on a bad example


def test_logrotate_config_rotates_every_log_and_recreates_it(tmp_path: Path) -> None:
    logrotate = shutil.which("logrotate") or (
        "/usr/sbin/logrotate" if Path("/usr/sbin/logrotate").exists() else None
    )
    if logrotate is None:
        pytest.skip("logrotate is not installed")
    logs = tmp_path / "log"
    logs.mkdir()
    for name in ("llm-proxy.log", "audit.log", "events.jsonl"):
        (logs / name).write_text("a line\n")
    user = subprocess.run(["id", "-un"], capture_output=True, text=True, check=True).stdout.strip()
    group = subprocess.run(["id", "-gn"], capture_output=True, text=True, check=True).stdout.strip()
    conf = (ROOT / "deploy" / "logrotate" / "llm-proxy").read_text()
    conf = conf.replace("/var/log/llm-proxy", str(logs)).replace("llm-proxy llm-proxy", f"{user} {group}")
    # never signal a real llm-proxy.service from a test: record that the postrotate step ran
    conf, replaced = re.subn(r"(?m)^(\s*)systemctl kill .*$", rf"\1echo hup >> {tmp_path}/hup", conf)
    assert replaced == 1
    (tmp_path / "logrotate.conf").write_text(conf)
    result = subprocess.run(
        [logrotate, "--force", "--state", str(tmp_path / "state"), str(tmp_path / "logrotate.conf")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "hup").read_text() == "hup\n"  # once for all files (sharedscripts)
    for name, mode in (("llm-proxy.log", 0o640), ("audit.log", 0o600), ("events.jsonl", 0o640)):
        assert (logs / name).read_text() == ""  # recreated, empty, as private as llm-proxy makes it
        assert (logs / name).stat().st_mode & 0o777 == mode
        rotated = [p for p in logs.iterdir() if p.name.startswith(f"{name}-")]
        assert [p.read_text() for p in rotated] == ["a line\n"]
