"""The server's own log lines as an operator meets them when LOG_FILE is unset: on stderr, written by a
thread of their own, so a stderr nobody reads (a wedged journald, a full pipe) never stops the loop.

The installed `llm-proxy server` runs as a subprocess with stderr a one-page pipe nobody reads; every
request to an unreachable upstream logs a warning, so ~30 requests fill it.
"""

from __future__ import annotations

import fcntl
import os

import aiohttp

from tests.e2e.conftest import ServerProcess, free_port, poll
from tests.e2e.test_access_log import blocked_on_a_pipe

UPSTREAM_KEY = "sk-upstream-project-key-0123456789abcdef"
BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


async def test_log_lines_to_a_stderr_nobody_reads_never_stop_the_loop(tmp_path) -> None:
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, 4096)  # a page: ~30 warnings fill it
    unreachable = f"http://127.0.0.1:{free_port()}"  # nothing listens: each request logs a warning
    env = {"UPSTREAM_BASE_URL": unreachable, "LOG_FILE": "", "ACCESS_LOG": "off"}
    server = ServerProcess(tmp_path, env, stderr=write_end)
    try:
        await server.start()
        os.close(write_end)
        project = await server.manage("project", "create", "--name", "p", "--api-key", UPSTREAM_KEY)
        token = (await server.manage("token", "generate", "--project-id", project["id"]))["token"]
        headers = {"Authorization": f"Bearer {token}"}
        pid = server.process.pid if server.process is not None else 0
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as client:

            async def answered(n: int) -> list[int]:
                statuses = []
                for _ in range(n):
                    async with client.post(
                        server.url + "/v1/chat/completions", json=BODY, headers=headers
                    ) as r:
                        statuses.append(r.status)
                return statuses

            for _ in range(50):  # 20 warnings a round: the page is full within a few
                assert await answered(20) == [502] * 20
                if await poll(lambda: blocked_on_a_pipe(pid), timeout=0.3):
                    break
            assert blocked_on_a_pipe(pid)  # the log's writer is stuck on the full pipe, for good
            assert await answered(200) == [502] * 200  # 200 more warnings: the loop never waits for it
            async with client.get(server.url + "/health") as r:
                assert r.status == 200
        assert await server.stop() == 0
    finally:
        os.close(read_end)  # a writer still blocked gets EPIPE
        await server.kill_if_running()
