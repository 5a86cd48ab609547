"""A cluster on loopback: `llm-proxy server` processes sharing PostgreSQL and Redis, behind Debian's nginx.

nginx runs in the foreground (``daemon off``, one process) with a prefix and a config of its own in the
test's directory; its upstream block is ``deploy/nginx/llm-proxy.conf`` itself, with the compose file's
instance names replaced by the test's loopback ports, so the test runs the configuration we ship.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from tests.e2e.conftest import ServerProcess, free_port

SHIPPED_NGINX_CONF = Path(__file__).resolve().parents[2] / "deploy" / "nginx" / "llm-proxy.conf"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
_SERVER_LINE = re.compile(r"^(\s*)server proxy\d:8080( [^;]*)?;\n", re.MULTILINE)
_LISTEN = re.compile(r"^(\s*)listen 80;", re.MULTILINE)


def render_shipped_conf(ports: list[int], listen: str) -> str:
    """deploy/nginx/llm-proxy.conf with one server line per loopback port and ``listen`` replaced."""
    shipped = SHIPPED_NGINX_CONF.read_text()
    found = _SERVER_LINE.search(shipped)
    assert found, "no `server proxyN:8080 …;` line in the shipped nginx config"
    indent, options = found.group(1), found.group(2) or ""
    servers = "".join(f"{indent}server 127.0.0.1:{port}{options};\n" for port in ports)
    lines = iter([servers])  # the first server line becomes all of them, the others go
    rendered = _SERVER_LINE.sub(lambda _: next(lines, ""), shipped)
    rendered, count = _LISTEN.subn(rf"\1listen {listen};", rendered)
    assert count == 1, "the shipped nginx config must listen on port 80 exactly once"
    return rendered


def main_conf(prefix: Path, include: Path) -> str:
    """A main nginx.conf writing everything under ``prefix``; the access log names who answered when."""
    paths = "\n".join(
        f"    {kind}_temp_path {prefix / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""master_process off;
error_log {prefix / "error.log"} notice;
pid {prefix / "nginx.pid"};
events {{ worker_connections 4096; }}
http {{
    log_format cluster '$msec $status $http_x_request_id $upstream_addr';
    access_log {prefix / "access.log"} cluster;
{paths}
    include {include};
}}
"""


@dataclass(frozen=True)
class Answered:
    """One line of nginx's access log: when it answered, with what, from which instance(s)."""

    at: float  # wall clock, seconds
    status: int
    upstreams: list[str]  # the last one answered; earlier ones refused or dropped the connection
    request_id: str


class LoadBalancer:
    """nginx in front of the cluster, as a subprocess of the test."""

    def __init__(self, prefix: Path, ports: list[int]) -> None:
        self.prefix = prefix
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        prefix.mkdir(parents=True, exist_ok=True)
        include = prefix / "llm-proxy.conf"
        include.write_text(render_shipped_conf(ports, f"127.0.0.1:{self.port}"))
        self.conf = prefix / "nginx.conf"
        self.conf.write_text(main_conf(prefix, include))
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            NGINX, "-p", str(self.prefix), "-c", str(self.conf), "-g", "daemon off;",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                if self.process.returncode is not None:
                    _, err = await self.process.communicate()
                    raise AssertionError(f"nginx exited {self.process.returncode}: {err.decode()}")
                try:
                    async with session.get(f"{self.url}/health") as response:
                        if response.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)
        raise AssertionError("nginx did not answer /health within 10 s")

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGQUIT)  # graceful: finishes the requests in flight
            try:
                await asyncio.wait_for(self.process.wait(), 10)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()

    def answered(self) -> list[Answered]:
        lines = (self.prefix / "access.log").read_text().splitlines()
        found = []
        for line in lines:
            at, status, request_id, upstreams = line.split(" ", 3)  # "a:1, b:2" when nginx tried several
            found.append(Answered(float(at), int(status), upstreams.split(", "), request_id))
        return found

    async def answered_all(self, request_ids: set[str], deadline_s: float = 5.0) -> list[Answered]:
        """The access log once it names every one of ``request_ids`` (nginx logs after the answer went out)."""
        deadline = time.monotonic() + deadline_s
        while True:
            found = self.answered()
            missing = request_ids - {a.request_id for a in found}
            if not missing:
                return found
            assert time.monotonic() < deadline, f"not in nginx's access log: {sorted(missing)[:5]}"
            await asyncio.sleep(0.02)


def workers_of(server: ServerProcess) -> list[int]:
    """The pids of the dispatcher workers a server spawned (its children)."""
    assert server.process is not None
    children = Path(f"/proc/{server.process.pid}/task/{server.process.pid}/children")
    try:
        return [int(pid) for pid in children.read_text().split()]
    except OSError:
        return []


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie, exited but not reaped, counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def kill_now(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
