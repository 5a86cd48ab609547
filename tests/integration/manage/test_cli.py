"""``llm-proxy manage`` against a real running server on loopback."""

from __future__ import annotations

import asyncio
import io
import json
import socket
import sys
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from llmproxy import config
from llmproxy.cli import build_parser
from llmproxy.manage.client import execute
from tests.integration.manage.support import MANAGEMENT_TOKEN, UPSTREAM_KEY, Cli

ROOT = Path(__file__).resolve().parents[3]


async def test_project_create_then_list_and_get_in_readable_form(cli: Cli) -> None:
    created = await cli("project", "create", "--name", "acme", "--api-key", UPSTREAM_KEY)
    assert (created.code, created.err) == (0, "")
    assert "name               acme" in created.out
    assert "sk-…WXYZ" in created.out and UPSTREAM_KEY not in created.out
    project_id = next(line.split()[1] for line in created.out.splitlines() if line.startswith("id "))
    listed = await cli("project", "list")
    header, row = listed.out.splitlines()
    assert header.split() == ["ID", "NAME", "ACTIVE", "API_KEY", "UPSTREAM_BASE_URL", "CREATED", "(UTC)"]
    assert row.split()[:5] == [project_id[:8], "acme", "yes", "sk-…WXYZ", "-"]
    got = await cli("project", "get", project_id)
    assert f"id                 {project_id}" in got.out


async def test_token_generate_prints_the_token_once_and_lists_only_its_hint(cli: Cli) -> None:
    project = (await cli("--json", "project", "create", "--name", "acme", "--api-key", UPSTREAM_KEY)).json()
    assert isinstance(project, dict)
    generated = await cli(
        "token", "generate", "--project-id", project["id"], "--duration-minutes", "60", "--max-requests", "10"
    )
    assert generated.code == 0
    raw = next(line.split()[1] for line in generated.out.splitlines() if line.startswith("token "))
    assert raw.startswith("sk-")
    assert generated.out.count(raw) == 1
    assert "only time the token is shown" in generated.out
    stored = await cli.store.list_tokens(project["id"])
    assert len(stored) == 1
    listed = await cli("token", "list", "--project-id", project["id"])
    assert raw not in listed.out
    assert stored[0].token_hint in listed.out
    assert listed.out.splitlines()[1].split()[3:5] == ["active", "0/10"]


async def test_token_revoke_revokes_and_active_only_hides_it(cli: Cli) -> None:
    project = (await cli("--json", "project", "create", "--name", "acme", "--api-key", UPSTREAM_KEY)).json()
    token = (await cli("token", "generate", "--project-id", project["id"], "--json")).json()  # type: ignore[index]
    assert isinstance(token, dict)
    revoked = await cli("token", "revoke", token["id"])
    assert (revoked.code, revoked.out) == (0, f"Token {token['id']} revoked\n")
    assert (await cli("token", "revoke", token["id"], "--json")).json() == {
        "id": token["id"],
        "revoked": True,
    }
    assert (await cli("token", "list", "--active-only")).out == "(none)\n"
    got = (await cli("--json", "token", "get", token["id"])).json()
    assert isinstance(got, dict) and got["is_active"] is False and got["token"] == token["token_hint"]
    stored = await cli.store.get_token(token["id"])
    assert stored is not None and stored.is_active is False


async def test_json_output_is_the_api_answer(cli: Cli) -> None:
    created = await cli("project", "create", "--name", "acme", "--api-key", UPSTREAM_KEY, "--json")
    project = created.json()
    assert isinstance(project, dict) and project["api_key"] == "sk-…WXYZ"
    listed = (await cli("project", "list", "--json")).json()
    assert listed == [project]


async def test_project_update_deactivates_and_revokes_tokens(cli: Cli) -> None:
    project = (await cli("--json", "project", "create", "--name", "acme", "--api-key", UPSTREAM_KEY)).json()
    assert isinstance(project, dict)
    await cli("token", "generate", "--project-id", project["id"])
    updated = await cli("--json", "project", "update", project["id"], "--active", "false", "--revoke-tokens")
    assert updated.code == 0
    assert updated.json()["is_active"] is False  # type: ignore[index]
    assert [t.is_active for t in await cli.store.list_tokens(project["id"])] == [False]


async def test_the_api_key_can_come_from_stdin(cli: Cli) -> None:
    created = await cli(
        "--json", "project", "create", "--name", "acme", "--api-key", "-", stdin=UPSTREAM_KEY + "\n"
    )
    assert created.code == 0
    projects = await cli.store.list_projects()
    assert [p.api_key for p in projects] == [UPSTREAM_KEY]


async def test_an_http_error_is_one_line_on_stderr_and_exit_1(cli: Cli) -> None:
    missing_id = "00000000-0000-4000-8000-000000000000"
    missing = await cli("project", "get", missing_id)
    assert (missing.code, missing.out) == (1, "")
    assert missing.err == "llm-proxy manage: HTTP 404 not_found: Project not found\n"
    bad = await cli("token", "generate", "--project-id", missing_id, "--duration-minutes", "0")
    assert bad.code == 1
    assert bad.err.startswith("llm-proxy manage: HTTP 422 invalid_field: ")
    assert bad.err.endswith(" (param: duration_minutes)\n")
    denied = await cli("project", "list", token="wrong-token")
    assert denied.err == "llm-proxy manage: HTTP 401 unauthorized: Missing or invalid management token\n"


async def test_an_unreachable_api_is_a_clear_message_and_exit_1() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    args = build_parser().parse_args(
        ["manage", "--manage-api-base-url", url, "--management-token", MANAGEMENT_TOKEN, "project", "list"]
    )
    out, err = io.StringIO(), io.StringIO()
    assert await execute(args, out=out, err=err) == 1
    assert err.getvalue().startswith(f"llm-proxy manage: cannot reach the management API at {url}: ")
    assert err.getvalue().count("\n") == 1


async def test_a_missing_management_token_is_exit_2(cli: Cli) -> None:
    args = build_parser().parse_args(["manage", "--manage-api-base-url", cli.base_url, "project", "list"])
    args.server = config.load(env={}).server
    err = io.StringIO()
    assert await execute(args, out=io.StringIO(), err=err) == 2
    assert "management token is required" in err.getvalue()


async def test_an_update_without_changes_is_exit_2(cli: Cli) -> None:
    result = await cli("project", "update", "00000000-0000-4000-8000-000000000000")
    assert result.code == 2
    assert result.err.startswith("llm-proxy manage: nothing to update")


async def test_the_console_command_reads_the_token_from_the_environment(cli: Cli, tmp_path: Path) -> None:
    env = {"MANAGEMENT_TOKEN": MANAGEMENT_TOKEN, "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "llmproxy",
        "manage",
        "--manage-api-base-url",
        cli.base_url,
        "project",
        "create",
        "--name",
        "from-env",
        "--api-key",
        UPSTREAM_KEY,
        "--json",
        cwd=str(ROOT),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    assert json.loads(out)["name"] == "from-env"
    assert [p.name for p in await cli.store.list_projects()] == ["from-env"]


@pytest.mark.parametrize(
    ("body", "content_type"), [(b"hello", "text/plain"), (b'{"status": "ok"}', "application/json")]
)
async def test_an_answer_not_from_the_management_api_is_an_error_not_a_traceback(
    body: bytes, content_type: str
) -> None:
    async def impostor(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type=content_type)

    app = web.Application()
    app.router.add_route("*", "/{path:.*}", impostor)
    async with TestServer(app, host="127.0.0.1", port=0) as server:
        url = str(server.make_url("")).rstrip("/")
        args = build_parser().parse_args(
            ["manage", "--manage-api-base-url", url, "--management-token", "t", "project", "list"]
        )
        out, err = io.StringIO(), io.StringIO()
        assert await execute(args, out=out, err=err) == 1
    assert out.getvalue() == ""
    assert err.getvalue().startswith("llm-proxy manage: ")
    assert err.getvalue().count("\n") == 1
