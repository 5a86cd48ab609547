"""llmproxy.daemon: --detach, stop and status, with a dummy `main` in a throwaway launcher process.

The launcher is a small script whose path contains "llmproxy", so the daemons it forks pass
`process_is_ours` exactly as a real `llm-proxy` would; forking pytest itself is never done.
"""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from llmproxy import daemon

DUMMY = """
import json, os, signal, sys, time
from llmproxy import daemon

mode, pid_file, log_file, timeout = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])

def main(ready):
    print(f"daemon pid {os.getpid()}", flush=True)
    if mode == "fail":
        raise RuntimeError("cannot listen on 127.0.0.1:1: address already in use")
    if mode == "exit":
        raise SystemExit("MANAGEMENT_TOKEN is too short")
    if mode == "return-early":
        return
    if mode == "never-ready":
        while True:
            time.sleep(0.05)
    stopping = []
    if mode == "stubborn":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    elif mode != "no-handler":
        signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    if mode == "env":
        null, stdin = os.stat(os.devnull), os.fstat(0)
        print(json.dumps({
            "cwd": os.getcwd(),
            "umask": os.umask(0o022),
            "session_leader": os.getsid(0) == os.getpid(),
            "new_session": os.getsid(0) != int(sys.argv[5]),
            "stdin_is_devnull": (stdin.st_dev, stdin.st_ino) == (null.st_dev, null.st_ino),
        }), flush=True)
        sys.stderr.write("to stderr\\n")
    ready()
    print("serving", flush=True)
    if mode == "brief":
        return
    while not stopping:
        time.sleep(0.05)
    print("drained", flush=True)

sys.exit(daemon.detach_and_run(
    main, pid_file=pid_file, log_file=None if log_file == "-" else log_file, ready_timeout=timeout
))
"""

STARTED = re.compile(r"^started \(pid (\d+)\)")


def _poll(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def _gone(pid: int) -> bool:
    return not daemon.process_is_ours(pid)


class Launcher:
    """Runs the dummy launcher and remembers every daemon it started, to kill leftovers."""

    def __init__(self, tmp_path: Path) -> None:
        self.dir = tmp_path
        self.script = tmp_path / "llmproxy_dummy_daemon.py"
        self.script.write_text(DUMMY)
        self.pids: list[int] = []

    def __call__(
        self, mode: str, pid_file: str, log_file: str | None = None, timeout: float = 20.0
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [
                sys.executable,
                str(self.script),
                mode,
                pid_file,
                log_file or "-",
                str(timeout),
                str(os.getsid(0)),
            ],
            cwd=self.dir,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if m := STARTED.match(result.stdout):
            self.pids.append(int(m.group(1)))
        return result

    def daemon_pid(self, result: subprocess.CompletedProcess[str]) -> int:
        m = STARTED.match(result.stdout)
        assert m, (result.stdout, result.stderr)
        return int(m.group(1))

    def cleanup(self) -> None:
        for pid in self.pids:
            if daemon.process_is_ours(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Launcher]:
    launcher = Launcher(tmp_path)
    yield launcher
    launcher.cleanup()


@pytest.fixture
def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


# --- --detach ---------------------------------------------------------------------------------


def test_detach_exits_0_only_once_main_is_ready_and_the_pid_file_names_the_daemon(
    launch: Launcher, tmp_path: Path
) -> None:
    pid_file = tmp_path / "proxy.pid"
    result = launch("serve", str(pid_file))
    assert result.returncode == 0, result.stderr
    pid = launch.daemon_pid(result)
    # no polling: the launcher returned after ready(), so the pid file must already be there
    assert pid_file.read_text() == f"{pid}\n"
    assert daemon.process_is_ours(pid)
    assert pid != os.getpid()


def test_detach_without_pid_file_is_refused_with_2_and_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code = daemon.detach_and_run(lambda ready: None, pid_file=None, log_file=None)
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--pid-file" in err


def test_failure_before_ready_exits_1_with_the_reason_and_leaves_no_pid_file(
    launch: Launcher, tmp_path: Path
) -> None:
    pid_file, log_file = tmp_path / "proxy.pid", tmp_path / "proxy.log"
    result = launch("fail", str(pid_file), str(log_file))
    assert result.returncode == 1
    assert "failed to start: cannot listen on 127.0.0.1:1: address already in use" in result.stderr
    assert not pid_file.exists()
    log = log_file.read_text()
    assert "Traceback" in log and "RuntimeError: cannot listen on 127.0.0.1:1" in log


def test_system_exit_before_ready_reports_its_message(launch: Launcher, tmp_path: Path) -> None:
    result = launch("exit", str(tmp_path / "proxy.pid"))
    assert result.returncode == 1
    assert "failed to start: MANAGEMENT_TOKEN is too short" in result.stderr


def test_main_returning_without_ready_is_a_failed_start(launch: Launcher, tmp_path: Path) -> None:
    result = launch("return-early", str(tmp_path / "proxy.pid"))
    assert result.returncode == 1
    assert "exited before it was ready" in result.stderr


def test_launcher_gives_up_after_the_ready_timeout_and_terminates_the_daemon(
    launch: Launcher, tmp_path: Path
) -> None:
    pid_file, log_file = tmp_path / "proxy.pid", tmp_path / "proxy.log"
    result = launch("never-ready", str(pid_file), str(log_file), timeout=1.0)
    assert result.returncode == 1
    assert "not ready after 1s" in result.stderr
    pid = int(re.search(r"daemon pid (\d+)", log_file.read_text()).group(1))  # type: ignore[union-attr]
    launch.pids.append(pid)
    assert _poll(lambda: _gone(pid))
    assert not pid_file.exists()


def test_second_detach_with_the_same_pid_file_is_refused_while_the_first_runs(
    launch: Launcher, tmp_path: Path
) -> None:
    pid_file = tmp_path / "proxy.pid"
    first = launch.daemon_pid(launch("serve", str(pid_file)))
    second = launch("serve", str(pid_file))
    assert second.returncode == 1
    assert second.stderr == f"llm-proxy: already running (pid {first})\n"
    assert pid_file.read_text() == f"{first}\n"
    assert daemon.process_is_ours(first)


def test_stale_pid_file_of_a_dead_process_is_replaced(
    launch: Launcher, tmp_path: Path, dead_pid: int
) -> None:
    pid_file = tmp_path / "proxy.pid"
    pid_file.write_text(f"{dead_pid}\n")
    result = launch("serve", str(pid_file))
    assert result.returncode == 0, result.stderr
    assert pid_file.read_text() == f"{launch.daemon_pid(result)}\n"


def test_log_file_defaults_to_the_pid_file_with_a_log_suffix(launch: Launcher, tmp_path: Path) -> None:
    result = launch("serve", str(tmp_path / "proxy.pid"))
    assert result.returncode == 0, result.stderr
    assert _poll(lambda: "serving" in (tmp_path / "proxy.log").read_text())


def test_daemon_keeps_the_working_directory_in_a_new_session_with_umask_022_and_stdio_redirected(
    launch: Launcher, tmp_path: Path
) -> None:
    log_file = tmp_path / "proxy.log"
    old_umask = os.umask(0o077)  # inherited by the launcher; the daemon must not keep it
    try:
        result = launch("env", "run.pid", str(log_file))  # a relative pid file, resolved against cwd
    finally:
        os.umask(old_umask)
    assert result.returncode == 0, result.stderr
    facts = json.loads(next(line for line in log_file.read_text().splitlines() if line.startswith("{")))
    assert facts == {
        "cwd": str(tmp_path),
        "umask": 0o022,
        "session_leader": False,
        "new_session": True,
        "stdin_is_devnull": True,
    }
    assert "to stderr" in log_file.read_text()
    assert stat.S_IMODE((tmp_path / "run.pid").stat().st_mode) == 0o600  # whatever the umask


def test_daemon_removes_its_pid_file_when_main_returns(launch: Launcher, tmp_path: Path) -> None:
    pid_file = tmp_path / "proxy.pid"
    result = launch("brief", str(pid_file))
    assert result.returncode == 0, result.stderr
    assert _poll(lambda: not pid_file.exists())


# --- stop / status -----------------------------------------------------------------------------


def test_status_is_0_and_names_the_pid_while_running(
    launch: Launcher, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pid_file = tmp_path / "proxy.pid"
    pid = launch.daemon_pid(launch("serve", str(pid_file)))
    assert daemon.status(str(pid_file)) == 0
    assert capsys.readouterr().out == f"running (pid {pid})\n"


def test_status_without_pid_file_is_3_not_running(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert daemon.status(str(tmp_path / "none.pid")) == 3
    assert capsys.readouterr().out == "not running\n"


def test_status_of_a_stale_pid_file_is_3_and_says_stale(
    tmp_path: Path, dead_pid: int, capsys: pytest.CaptureFixture[str]
) -> None:
    pid_file = tmp_path / "proxy.pid"
    pid_file.write_text(f"{dead_pid}\n")
    assert daemon.status(str(pid_file)) == 3
    assert "stale pid file" in capsys.readouterr().out
    assert pid_file.exists()  # status only looks


def test_stop_terminates_gracefully_and_the_pid_file_is_gone(
    launch: Launcher, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pid_file, log_file = tmp_path / "proxy.pid", tmp_path / "proxy.log"
    pid = launch.daemon_pid(launch("serve", str(pid_file), str(log_file)))
    assert daemon.stop(str(pid_file), timeout=10) == 0
    assert capsys.readouterr().out == f"stopped (pid {pid})\n"
    assert _gone(pid)
    assert not pid_file.exists()
    assert "drained" in log_file.read_text()  # main saw SIGTERM and returned: not killed
    assert daemon.status(str(pid_file)) == 3


def test_sigterm_before_main_handles_it_still_removes_the_pid_file(launch: Launcher, tmp_path: Path) -> None:
    pid_file = tmp_path / "proxy.pid"
    pid = launch.daemon_pid(launch("no-handler", str(pid_file)))
    os.kill(pid, signal.SIGTERM)
    assert _poll(lambda: _gone(pid))
    assert not pid_file.exists()


def test_stop_without_a_daemon_is_0_not_running(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert daemon.stop(str(tmp_path / "none.pid"), timeout=1) == 0
    assert capsys.readouterr().out == "not running\n"


def test_stop_never_signals_a_foreign_process_that_reused_the_pid(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    foreign = subprocess.Popen(["sleep", "30"])
    try:
        pid_file = tmp_path / "proxy.pid"
        pid_file.write_text(f"{foreign.pid}\n")
        assert daemon.stop(str(pid_file), timeout=1) == 0
        assert "removed stale pid file" in capsys.readouterr().out
        assert foreign.poll() is None  # still alive: not ours, not signalled
        assert not pid_file.exists()
    finally:
        foreign.kill()
        foreign.wait()


def test_stop_gives_up_with_1_when_the_daemon_outlives_the_timeout(
    launch: Launcher, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pid_file = tmp_path / "proxy.pid"
    pid = launch.daemon_pid(launch("stubborn", str(pid_file)))
    assert daemon.stop(str(pid_file), timeout=0.5) == 1
    assert f"still running after 0.5s (pid {pid})" in capsys.readouterr().err
    assert daemon.process_is_ours(pid)
    assert pid_file.exists()


# --- pid files ---------------------------------------------------------------------------------


def test_write_pid_file_replaces_atomically_never_truncating_in_place(tmp_path: Path) -> None:
    pid_file = tmp_path / "proxy.pid"
    pid_file.write_text("999999\n")
    with open(pid_file) as old:  # a reader holding the old file keeps its whole content
        daemon.write_pid_file(str(pid_file), 4242)
        assert old.read() == "999999\n"
    assert pid_file.read_text() == "4242\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["proxy.pid"]  # no temporary left


def test_write_pid_file_refuses_when_another_live_llm_proxy_holds_it(tmp_path: Path) -> None:
    rival = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "llm-proxy"])
    try:
        assert _poll(lambda: daemon.process_is_ours(rival.pid))
        pid_file = tmp_path / "proxy.pid"
        pid_file.write_text(f"{rival.pid}\n")
        with pytest.raises(daemon.AlreadyRunning) as refused:
            daemon.write_pid_file(str(pid_file), os.getpid())
        assert refused.value.pid == rival.pid
        assert pid_file.read_text() == f"{rival.pid}\n"
    finally:
        rival.kill()
        rival.wait()


def test_an_exited_but_unreaped_process_is_not_running(tmp_path: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass", "llm-proxy"])
    try:
        zombie = Path(f"/proc/{child.pid}/stat")
        assert _poll(lambda: zombie.read_text().rpartition(")")[2].split()[0] == "Z")
        assert not daemon.process_is_ours(child.pid)
    finally:
        child.wait()


def test_garbage_in_the_pid_file_is_stale(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pid_file = tmp_path / "proxy.pid"
    pid_file.write_text("not a pid\n")
    assert daemon.status(str(pid_file)) == 3
    assert "holds no pid" in capsys.readouterr().out
