"""The documentation sandbox's first process: runs a plan of shell steps as a reader would, on a
private copy of this machine, and writes what happened as JSON.

Started by tests/e2e/doc_sandbox.py under `unshare --mount --net --pid --fork`, as root, so it is PID 1
of its own namespaces: /etc, /opt, /var, /home, /root, /run, /srv and /usr/local are overlays whose
changes live on a tmpfs and vanish with it (useradd, /etc/systemd/system, /var/log/llm-proxy are
real here and nowhere else), 127.0.0.1 is a private loopback (port 8080 and Redis on 6379 are ours),
and every process left over dies with this one. The reader is `admin`, a login user whose `sudo` (a
shim) really becomes root; `systemctl`, `journalctl` and `apt-get` are shims too (doc_sandbox_bin/).

    python -m tests.e2e.doc_sandbox_init PLAN.json RESULT.json
"""

from __future__ import annotations

import asyncio
import grp
import json
import os
import pwd
import shutil
import subprocess
import sys
import threading
import time
import traceback
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.fakes.upstream import FakeUpstream

OVERLAID = ("/etc", "/opt", "/var", "/home", "/root", "/run", "/srv", "/usr/local")
READER = "admin"
CHECKOUT = Path("/home/admin/llmproxy")
LOGIN_PATH = "/usr/local/bin:/usr/bin:/bin"  # Debian's for a login user; root's adds the sbin dirs
ROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SUDO_HELPER = Path("/usr/local/libexec/doc-sandbox/setpriv")
UPSTREAM_KEY = "sk-doc-test-upstream-key-0123456789"
FAILED = "doc-test: a command failed"
PRELUDE = f"""set -E -o pipefail
trap '__doc_rc=$?; __doc_fails=$((__doc_fails + 1)); printf "{FAILED} (exit %s): %s\\n" "$__doc_rc" "$BASH_COMMAND" >&2' ERR
umask 022
cd {CHECKOUT}
"""


def sh(*argv: str) -> None:
    done = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")


class Machine:
    """The private copy of this machine: overlays, loopback, the reader's account, checkout, Redis."""

    def __init__(self, plan: dict[str, Any]) -> None:
        self.plan = plan
        self.scratch = Path(plan["scratch"])
        self.steps_dir = self.scratch / "steps"

    def build(self) -> None:
        sh("mount", "-t", "tmpfs", "-o", "mode=0755", "doc-sandbox", str(self.scratch))
        for lower in OVERLAID:
            if not Path(lower).is_dir():
                continue
            layer = self.scratch / "overlay" / lower.strip("/").replace("/", "_")
            (layer / "upper").mkdir(parents=True)
            (layer / "work").mkdir()
            options = f"lowerdir={lower},upperdir={layer}/upper,workdir={layer}/work"
            sh("mount", "-t", "overlay", "overlay", "-o", options, lower)
        sh("ip", "link", "set", "lo", "up")
        self._package_mirror()
        self._shims()
        if subprocess.run(["id", READER], capture_output=True).returncode != 0:  # a Debian AMI has one
            sh("useradd", "--create-home", "--shell", "/bin/bash", "--user-group", READER)
        self._checkout()
        self.steps_dir.mkdir()
        shutil.chown(self.steps_dir, READER, READER)
        self._redis()

    def _package_mirror(self) -> None:
        """pip installs from a local wheelhouse (built once per dependency set by doc_sandbox.py)."""
        conf = f"[global]\nno-index = true\nfind-links = {self.plan['wheelhouse']}\ndisable-pip-version-check = true\n"
        for path in (Path("/etc/pip.conf"), Path("/etc/xdg/pip/pip.conf")):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(conf)
        for user_conf in (Path("/root/.config/pip"), Path("/root/.pip")):
            shutil.rmtree(user_conf, ignore_errors=True)

    def _shims(self) -> None:
        for shim in Path(self.plan["shims"]).iterdir():
            target = Path("/usr/local/bin", shim.name)
            shutil.copyfile(shim, target)
            target.chmod(0o755)
        # `sudo` becomes root through a setuid copy of setpriv, visible only in this mount namespace
        SUDO_HELPER.parent.mkdir(parents=True)
        shutil.copyfile(shutil.which("setpriv") or "/usr/bin/setpriv", SUDO_HELPER)
        SUDO_HELPER.chmod(0o4755)

    def _checkout(self) -> None:
        source = Path(self.plan["source"])
        CHECKOUT.parent.mkdir(parents=True, exist_ok=True)
        shutil.chown(CHECKOUT.parent, READER, READER)
        for name in self.plan["files"]:
            target = CHECKOUT / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / name, target)
        sh("chown", "-R", f"{READER}:{READER}", str(CHECKOUT))

    def _redis(self) -> None:
        """The Redis the docs install (redis-server): ours, on this namespace's 127.0.0.1:6379."""
        data = self.scratch / "redis"
        data.mkdir()
        argv = ["redis-server", "--bind", "127.0.0.1", "--port", "6379", "--save", "", "--appendonly", "no"]
        self.spawn([*argv, "--dir", str(data), "--logfile", str(data / "redis.log")])
        deadline = time.monotonic() + 20
        while subprocess.run(["redis-cli", "ping"], capture_output=True).stdout.strip() != b"PONG":
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not answer within 20 s")
            time.sleep(0.1)

    def spawn(self, argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        return subprocess.Popen(argv, **kwargs)

    def login_env(self, upstream_url: str) -> dict[str, str]:
        """The reader's login environment, with their own upstream settings exported."""
        return {
            "PATH": LOGIN_PATH,
            "HOME": f"/home/{READER}",
            "USER": READER,
            "LOGNAME": READER,
            "SHELL": "/bin/bash",
            "LANG": "C.UTF-8",
            "TERM": "dumb",
            "OPENAI_API_KEY": UPSTREAM_KEY,
            "UPSTREAM_BASE_URL": upstream_url,
        }


class Shell:
    """One login shell of the reader: blocks are sourced into it, so variables and cwd carry over."""

    def __init__(self, machine: Machine, env: dict[str, str]) -> None:
        self.machine = machine
        argv = ["setpriv", f"--reuid={READER}", f"--regid={READER}", "--init-groups"]
        self.process = machine.spawn(
            [*argv, "bash", "--noprofile", "--norc"], stdin=subprocess.PIPE, cwd=CHECKOUT, env=env
        )
        self.send(PRELUDE)

    def send(self, text: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(text.encode())
        self.process.stdin.flush()

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()  # its background jobs (a server) live on, as after closing a terminal


def wait_until(condition: Any, timeout: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return bool(condition())


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


class Runner:
    """Runs the plan's steps in order; the first step that hangs stops the rest."""

    def __init__(self, machine: Machine, upstream_url: str) -> None:
        self.machine = machine
        self.env = machine.login_env(upstream_url)
        self.shell: Shell | None = None

    def run(self, n: int, step: dict[str, Any]) -> dict[str, Any]:
        outcome: dict[str, Any] = {"label": step["label"], "status": "ok", "failures": [], "output": ""}
        if step.get("before"):
            before = subprocess.run(
                ["bash", "-c", step["before"]],
                cwd=CHECKOUT,
                env={**self.env, "PATH": ROOT_PATH, "HOME": "/root", "USER": "root"},
                capture_output=True,
                text=True,
                timeout=120,
            )
            if before.returncode != 0:
                return {**outcome, "status": "failed", "output": f"before: {before.stdout}{before.stderr}"}
        if step.get("wait_for"):
            path = CHECKOUT / step["wait_for"]  # an absolute path stays itself
            if not wait_until(lambda: path.is_file() and path.stat().st_size > 0, 30):
                return {**outcome, "status": "failed", "output": f"waited 30 s for {path} to be written"}
        if self.shell is None or step.get("new_shell"):
            if self.shell is not None:
                self.shell.close()
            self.shell = Shell(self.machine, self.env)
        script = self.machine.steps_dir / f"{n:02d}.sh"
        out, status, pid_file = (script.with_suffix(s) for s in (".out", ".status", ".pid"))
        script.write_text(step["script"])
        if step.get("background_until"):
            self.shell.send(f"( source {script} ) </dev/null >{out} 2>&1 & echo $! >{pid_file}\n")
            url = step["background_until"]
            started = wait_until(lambda: pid_file.exists() and pid_file.read_text().strip() != "", 10)
            pid = int(pid_file.read_text()) if started else 0
            ready = wait_until(lambda: answers(url) or not alive(pid), step["timeout"])
            if not (ready and alive(pid) and answers(url)):
                outcome["status"] = "failed" if ready else "timeout"
                outcome["failures"] = [f"{url} did not answer 200 while the block ran"]
        else:
            self.shell.send(
                f'__doc_fails=0; source {script} </dev/null >{out} 2>&1; echo "$? $__doc_fails" >{status}.tmp; '
                f"mv {status}.tmp {status}\n"
            )
            shell = self.shell.process
            done = wait_until(lambda: status.exists() or shell.poll() is not None, step["timeout"])
            if not done:
                outcome["status"] = "timeout"
            elif not status.exists():
                outcome["status"] = "failed"
                outcome["failures"] = ["the shell exited"]
            else:
                rc, fails = (int(x) for x in status.read_text().split())
                if rc or fails:
                    outcome["status"] = "failed"
        output = out.read_text(errors="replace") if out.exists() else ""
        outcome["failures"] += [line for line in output.splitlines() if line.startswith(FAILED)]
        outcome["output"] = output[-6000:]
        return outcome


def describe(path: Path) -> dict[str, Any] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    info: dict[str, Any] = {"mode": st.st_mode & 0o7777, "uid": st.st_uid, "gid": st.st_gid}
    info["owner"] = _name(pwd.getpwuid, st.st_uid)
    info["group"] = _name(grp.getgrgid, st.st_gid)
    if path.is_file():
        info["text"] = path.read_bytes()[:1_000_000].decode(errors="replace")
    return info


def _name(lookup: Any, ident: int) -> str:
    try:
        return str(lookup(ident)[0])
    except KeyError:
        return str(ident)


class UpstreamThread:
    """tests/fakes/upstream.py on this namespace's loopback, in a thread of its own."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.fake = FakeUpstream()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self) -> str:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.fake.__aenter__(), self.loop).result(20)
        return self.fake.url

    def stop(self) -> list[dict[str, Any]]:
        asyncio.run_coroutine_threadsafe(self.fake.__aexit__(None, None, None), self.loop).result(20)
        self.loop.call_soon_threadsafe(self.loop.stop)
        return [
            {
                "method": r.method,
                "path": r.path,
                "authorization": r.headers.get("Authorization", ""),
                "body": r.body.decode(errors="replace"),
            }
            for r in self.fake.requests
        ]


def main(plan_file: str, result_file: str) -> int:
    plan = json.loads(Path(plan_file).read_text())
    result: dict[str, Any] = {"steps": [], "upstream": [], "files": {}, "journals": {}, "error": None}
    machine = Machine(plan)
    try:
        machine.build()
        upstream = UpstreamThread()
        runner = Runner(machine, upstream.start())
        hung = False
        for n, step in enumerate(plan["steps"]):
            if hung:
                result["steps"].append(
                    {"label": step["label"], "status": "not run", "failures": [], "output": ""}
                )
                continue
            started = time.monotonic()
            outcome = runner.run(n, step)
            outcome["seconds"] = round(time.monotonic() - started, 1)
            hung = outcome["status"] == "timeout"
            result["steps"].append(outcome)
        for name in plan["collect"]:
            result["files"][name] = describe(CHECKOUT / name)
        for journal in Path("/run/doc-sandbox/systemd").glob("*.journal"):
            result["journals"][journal.stem] = journal.read_text(errors="replace")[-6000:]
        result["upstream"] = upstream.stop()
    except Exception:
        result["error"] = traceback.format_exc()
    Path(result_file).write_text(json.dumps(result))
    return 0


def init(plan_file: str, result_file: str) -> int:
    """As PID 1: run the plan in a child, and reap every orphan (a daemon that detached) meanwhile,
    so that `kill -0` and /proc stop seeing a process once it has exited."""
    if os.getpid() != 1:  # never mount overlays on the real /etc: only inside unshare's namespaces
        sys.exit("doc_sandbox_init runs as PID 1 of new namespaces: start it with tests/e2e/doc_sandbox.py")
    worker = os.fork()
    if worker == 0:
        os._exit(main(plan_file, result_file))
    while True:
        pid, status = os.wait()
        if pid == worker:
            return os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    sys.exit(init(*sys.argv[1:]))
