"""`--detach`, `stop` and `status`: run a long-lived command as a daemon, found again by its pid file.

Hand-rolled rather than python-daemon: its DaemonContext detaches but cannot make the launching
process wait until the daemon actually serves, and `--detach` must exit 0 only then (SPEC §1).
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time
import traceback
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Literal

from llmproxy.filemodes import PRIVATE, create_file

__all__ = (
    "READY_TIMEOUT",
    "AlreadyRunning",
    "detach_and_run",
    "process_is_ours",
    "status",
    "stop",
    "write_pid_file",
)

READY_TIMEOUT = 30.0  # seconds the launcher waits for the daemon to report it serves
EXIT_USAGE = 2
EXIT_NOT_RUNNING = 3  # LSB init-script convention for `status`
EXIT_STATUS_UNKNOWN = 4
_OUR_NAMES = (b"llm-proxy", b"llmproxy")
_STOP_POLL = 0.1

Main = Callable[[Callable[[], None]], None]
PidState = Literal["absent", "running", "stale"]


class AlreadyRunning(Exception):
    """The pid file names a live llm-proxy process: a second daemon must not take its place."""

    def __init__(self, pid: int) -> None:
        super().__init__(f"already running (pid {pid})")
        self.pid = pid


def _complain(message: str) -> None:
    sys.stderr.write(f"llm-proxy: {message}\n")
    sys.stderr.flush()


# --- pid files --------------------------------------------------------------------------------


def process_is_ours(pid: int) -> bool:
    """Is `pid` a live (not zombie) llm-proxy process? A pid file outlives a killed daemon and its
    pid may be reused by an unrelated process, which must then be neither signalled nor reported."""
    if pid <= 0:
        return False
    if not Path("/proc/self").is_dir():  # no procfs (macOS): existence is all we can know
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    proc = Path("/proc", str(pid))
    try:
        stat = (proc / "stat").read_text(errors="replace")
        cmdline = (proc / "cmdline").read_bytes()
    except OSError:  # gone, or hidden from us (hidepid): not one we can manage
        return False
    state = stat.rpartition(")")[2].split()[:1]
    if state in (["Z"], ["X"]):  # exited, not yet reaped by its parent
        return False
    return any(name in cmdline for name in _OUR_NAMES)


def _inspect(pid_file: str) -> tuple[PidState, int | None]:
    """What the pid file says: absent, a running llm-proxy, or stale (dead pid, reused pid, garbage).
    Raises OSError if it exists but cannot be read."""
    try:
        text = Path(pid_file).read_text(encoding="ascii", errors="replace")
    except FileNotFoundError:
        return "absent", None
    try:
        pid = int(text.strip())
    except ValueError:
        return "stale", None
    return ("running" if process_is_ours(pid) else "stale"), pid


def write_pid_file(pid_file: str, pid: int) -> None:
    """Write `pid` to `pid_file` atomically (a reader sees the old file or the new one, never a
    partial one). Raises AlreadyRunning if the file meanwhile names another live llm-proxy."""
    tmp = f"{pid_file}.{pid}.tmp"
    with os.fdopen(create_file(tmp, PRIVATE, os.O_WRONLY | os.O_TRUNC), "w", encoding="ascii") as f:
        f.write(f"{pid}\n")
    try:
        try:
            os.link(tmp, pid_file)  # create-if-absent: of two daemons racing, exactly one wins
        except OSError:  # exists (stale, or a rival), or no hard links on this filesystem
            state, other = _inspect(pid_file)
            if state == "running" and other is not None and other != pid:
                raise AlreadyRunning(other) from None
            os.replace(tmp, pid_file)
    finally:
        with suppress(FileNotFoundError):
            os.unlink(tmp)


def _remove_pid_file(pid_file: str, pid: int) -> None:
    """Remove the pid file only if it still names `pid`: never a successor's file."""
    with suppress(OSError):
        if Path(pid_file).read_text(encoding="ascii", errors="replace").strip() == str(pid):
            os.unlink(pid_file)


def _default_log_file(pid_file: str) -> str:
    root, ext = os.path.splitext(pid_file)
    return (root if ext == ".pid" else pid_file) + ".log"


# --- detach ------------------------------------------------------------------------------------


def detach_and_run(
    main: Main, *, pid_file: str | None, log_file: str | None, ready_timeout: float = READY_TIMEOUT
) -> int:
    """Run `main(ready)` as a daemon; return the launcher's exit status once the daemon is up.

    `main` calls `ready()` when it serves: the daemon then writes `pid_file` (atomically) and the
    launcher prints "started (pid N)" and returns 0. If `main` fails first, or is not ready within
    `ready_timeout` seconds (the daemon is then sent SIGTERM), the launcher prints the reason and
    returns 1. The daemon itself never returns from here: it exits with `main`'s status after
    removing its pid file (SIGTERM makes `main` return, or raises SystemExit before it took over).

    Choices: the working directory is kept, not changed to "/", so relative settings such as the
    default `sqlite:///./data/llm-proxy.db` mean what they meant at the prompt (pid and log paths are
    made absolute). stdout/stderr are appended to `log_file`, by default the pid file's path with
    ".log" for ".pid" (a crash after start must leave a trace somewhere). umask is 022.
    """
    if not pid_file:
        _complain("--detach needs --pid-file (stop and status find the daemon through it)")
        return EXIT_USAGE
    pid_file = os.path.abspath(pid_file)
    log_file = os.path.abspath(log_file or _default_log_file(pid_file))
    try:
        state, pid = _inspect(pid_file)
        if state == "running":
            _complain(f"already running (pid {pid})")
            return 1
        if state == "stale":
            with suppress(FileNotFoundError):
                os.unlink(pid_file)
    except OSError as exc:
        _complain(f"cannot use pid file {pid_file}: {exc.strerror or exc}")
        return 1
    pid_dir = os.path.dirname(pid_file)
    if not (os.path.isdir(pid_dir) and os.access(pid_dir, os.W_OK | os.X_OK)):
        _complain(f"cannot write pid file {pid_file}: {pid_dir} is missing or not writable")
        return 1
    try:
        log_fd = os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    except OSError as exc:
        _complain(f"cannot open log file {log_file}: {exc.strerror or exc}")
        return 1

    for stream in (sys.stdout, sys.stderr):
        with suppress(Exception):
            stream.flush()  # or the children would write the launcher's buffered output again
    read_end, write_end = os.pipe()
    first = os.fork()
    if first == 0:
        _leave_session(read_end)  # returns in the grandchild only
        try:
            code = _run_daemon(main, pid_file, log_fd, write_end)
        except BaseException:  # setting up the daemon failed: never unwind into the caller twice
            traceback.print_exc()
            os._exit(1)
        raise SystemExit(code)  # a normal interpreter exit: atexit handlers, buffered output
    os.close(write_end)
    os.close(log_fd)
    try:
        _, wait_status = os.waitpid(first, 0)
        if os.waitstatus_to_exitcode(wait_status) != 0:
            _complain("could not detach: fork failed")
            return 1
        return _await_ready(read_end, log_file, ready_timeout)
    finally:
        os.close(read_end)


def _leave_session(read_end: int) -> None:
    """First child: new session, then fork again and exit so the daemon can never regain a terminal."""
    try:
        os.close(read_end)
        os.setsid()
        if os.fork() != 0:
            os._exit(0)
    except BaseException:
        os._exit(1)


class _Channel:
    """The daemon's side of the pipe to the launcher: a few short lines, then closed."""

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    def send(self, kind: str, text: str = "") -> None:
        if self._fd is None:
            return
        # one line, kept under PIPE_BUF (4096 bytes) so the write is atomic
        line = f"{kind} {' '.join(text.split())}"[:1000] + "\n"
        with suppress(OSError):  # the launcher is gone (killed, timed out): nobody to tell
            os.write(self._fd, line.encode("utf-8", "replace"))

    def close(self) -> None:
        if self._fd is not None:
            with suppress(OSError):
                os.close(self._fd)
            self._fd = None


def _raise_exit(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _redirect_stdio(log_fd: int) -> None:
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    for stream in (sys.stdout, sys.stderr):
        with suppress(AttributeError, ValueError):
            stream.reconfigure(line_buffering=True)  # type: ignore[union-attr]


def _run_daemon(main: Main, pid_file: str, log_fd: int, channel_fd: int) -> int:
    """Grandchild: become the daemon, run `main`, report ready or the failure, clean up; exit status."""
    pid = os.getpid()
    channel = _Channel(channel_fd)
    channel.send("pid", str(pid))
    os.umask(0o022)
    _redirect_stdio(log_fd)
    # until `main` installs its own handler, SIGTERM unwinds through here (and the pid file goes)
    signal.signal(signal.SIGTERM, _raise_exit)
    is_ready = False

    def ready() -> None:
        nonlocal is_ready
        if not is_ready:
            write_pid_file(pid_file, pid)
            is_ready = True
            channel.send("ok")
            channel.close()

    code, reason = 0, "exited before it was ready"
    try:
        main(ready)
    except SystemExit as exc:
        if isinstance(exc.code, str):
            code, reason = 1, exc.code
        elif exc.code:
            code, reason = int(exc.code), f"exited with status {exc.code}"
    except BaseException as exc:  # the daemon's last word: log it, tell the launcher
        traceback.print_exc()
        code, reason = 1, str(exc) or type(exc).__name__
    if is_ready:
        _remove_pid_file(pid_file, pid)
    else:
        sys.stderr.write(f"llm-proxy: failed to start: {reason}\n")
        channel.send("error", reason)
        channel.close()
    for stream in (sys.stdout, sys.stderr):
        with suppress(Exception):
            stream.flush()
    return code


def _await_ready(fd: int, log_file: str, timeout: float) -> int:
    """Launcher: wait for the daemon's "ok" or "error <reason>" (line-framed: a worker process
    that inherited the pipe may keep it open, so EOF cannot be the signal)."""
    deadline = time.monotonic() + timeout
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    buffer, daemon_pid = b"", 0
    while (remaining := deadline - time.monotonic()) > 0:
        if not poller.poll(remaining * 1000):
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            _complain(f"failed to start: the daemon exited before it was ready (log: {log_file})")
            return 1
        buffer += chunk
        while b"\n" in buffer:
            line, _, buffer = buffer.partition(b"\n")
            kind, _, text = line.decode("utf-8", "replace").partition(" ")
            if kind == "pid" and text.isdigit():
                daemon_pid = int(text)
            elif kind == "ok":
                print(f"started (pid {daemon_pid}); log: {log_file}", flush=True)
                return 0
            elif kind == "error":
                _complain(f"failed to start: {text} (log: {log_file})")
                return 1
    if daemon_pid:
        with suppress(OSError):
            os.kill(daemon_pid, signal.SIGTERM)
    _complain(f"failed to start: not ready after {timeout:g}s, sent it SIGTERM (log: {log_file})")
    return 1


# --- stop / status -----------------------------------------------------------------------------


def stop(pid_file: str, timeout: float = 35.0) -> int:
    """SIGTERM the daemon and wait (bounded) until it is gone. Nothing running is success too, so
    `stop` is idempotent; still running after `timeout` exits 1 (no SIGKILL: it may be draining)."""
    try:
        state, pid = _inspect(pid_file)
    except OSError as exc:
        _complain(f"cannot read pid file {pid_file}: {exc.strerror or exc}")
        return 1
    if state != "running" or pid is None:
        if state == "stale":
            with suppress(FileNotFoundError):
                os.unlink(pid_file)
            print(f"not running (removed stale pid file {pid_file})")
        else:
            print("not running")
        return 0
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    except PermissionError:
        _complain(f"not allowed to signal pid {pid}: run as its user or root")
        return 1
    deadline = time.monotonic() + timeout
    while process_is_ours(pid):
        if time.monotonic() >= deadline:
            _complain(f"still running after {timeout:g}s (pid {pid})")
            return 1
        time.sleep(_STOP_POLL)
    _remove_pid_file(pid_file, pid)  # the daemon removes it itself, unless it was killed
    print(f"stopped (pid {pid})")
    return 0


def status(pid_file: str) -> int:
    """0 "running (pid N)"; 3 "not running" (also for a stale pid file, named as such); 4 unreadable."""
    try:
        state, pid = _inspect(pid_file)
    except OSError as exc:
        _complain(f"cannot read pid file {pid_file}: {exc.strerror or exc}")
        return EXIT_STATUS_UNKNOWN
    if state == "running":
        print(f"running (pid {pid})")
        return 0
    if state == "stale":
        named = f" names pid {pid}, which is not running" if pid else " holds no pid"
        print(f"not running (stale pid file: {pid_file}{named})")
    else:
        print("not running")
    return EXIT_NOT_RUNNING
