"""What the management API tests share: constants, the app assembly and a handle on its parts."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient

from llmproxy import config
from llmproxy.audit import Auditor
from llmproxy.auth.authority import Authority
from llmproxy.cli import build_parser
from llmproxy.errors import ProxyError, Refusal
from llmproxy.manage.api import ManageAPI
from llmproxy.manage.client import execute
from llmproxy.server.middleware import request_middleware
from llmproxy.store.base import AuditQuery, AuditRecord, Store
from llmproxy.store.sqlite import SqliteStore

MANAGEMENT_TOKEN = "test-management-token-0123456789"
AUTH = {"Authorization": f"Bearer {MANAGEMENT_TOKEN}"}
UPSTREAM_KEY = "sk-upstream-secret-key-abcdefghijklmnop-WXYZ"
UNKNOWN_ID = "00000000-0000-4000-8000-000000000000"
SPEND_LIMITS = ("max_tokens", "max_cost_usd", "tokens_per_minute")  # of tokens and projects
USAGE_TOTALS = ("prompt_tokens", "completion_tokens", "cached_tokens", "cost_usd")
# upstream URLs the proxy could not dial: out-of-range or unparsable ports, no host, another scheme
UNDIALLABLE_URLS = [
    "http://127.0.0.1:99999",
    "http://[::1",
    "http://127.0.0.1:abc",
    "http://:80",
    "ftp://x",
    "http://127.0.0.1:0",
    "https://example.com:65536",
]


def make_settings(tmp_path: Path, **env: str) -> config.Settings:
    values = {
        "MANAGEMENT_TOKEN": MANAGEMENT_TOKEN,
        "DATABASE_URL": f"sqlite:///{tmp_path}/llm-proxy.db",
        "AUDIT_LOG_FILE": str(tmp_path / "audit.log"),
        **env,
    }
    return config.load(env=values)


@dataclass
class Manage:
    """A running management API and what is behind it."""

    client: TestClient
    store: Store
    authority: Authority
    auditor: Auditor
    settings: config.Settings
    purged: list[str | None] = field(default_factory=list)

    async def create_project(
        self, name: str = "acme", api_key: str = UPSTREAM_KEY, **extra: Any
    ) -> dict[str, Any]:
        response = await self.client.post(
            "/manage/projects", json={"name": name, "api_key": api_key, **extra}, headers=AUTH
        )
        assert response.status == 201, await response.text()
        return await response.json()

    async def create_token(self, project_id: str, **extra: Any) -> dict[str, Any]:
        response = await self.client.post(
            "/manage/tokens", json={"project_id": project_id, **extra}, headers=AUTH
        )
        assert response.status == 201, await response.text()
        return await response.json()

    async def audit(self, **filters: Any) -> list[AuditRecord]:
        """Audit rows in the store after every queued record was written."""
        await self.auditor.flush()
        records, _ = await self.store.list_audit(AuditQuery(page_size=500, **filters))
        return records


def manage_app(api: ManageAPI) -> web.Application:
    """The management routes behind the server's middleware, then a catch-all standing in for the proxy."""

    async def proxy_stand_in(request: web.Request) -> web.Response:
        raise ProxyError(Refusal.ENDPOINT_NOT_ALLOWED)

    app = web.Application(middlewares=[request_middleware])
    app.add_routes(api.routes())
    app.router.add_route("*", "/{path:.*}", proxy_stand_in)
    return app


@dataclass
class Result:
    """What one ``llm-proxy manage`` command did: its exit code and output."""

    code: int
    out: str
    err: str

    def json(self) -> object:
        return json.loads(self.out)


@dataclass
class Cli:
    """``llm-proxy manage`` against a running server, in process: ``await cli("project", "list")``."""

    base_url: str
    store: SqliteStore

    async def __call__(self, *argv: str, token: str = MANAGEMENT_TOKEN, stdin: str = "") -> Result:
        common = ["--manage-api-base-url", self.base_url, "--management-token", token]
        args = build_parser().parse_args(["manage", *common, *argv])
        out, err = io.StringIO(), io.StringIO()
        code = await execute(args, out=out, err=err, stdin=io.StringIO(stdin))
        return Result(code, out.getvalue(), err.getvalue())
