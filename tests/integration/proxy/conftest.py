"""A real aiohttp server running the ProxyHandler in front of the fake upstream, on loopback.

The app is the server's request middleware plus the proxy as catch-all route; the Authority and the
Auditor are in-test doubles so these tests exercise the proxy alone (the full stack is in tests/e2e).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgspec
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from llmproxy.auth.authority import Grant, Limits
from llmproxy.auth.tokens import generate_token
from llmproxy.config import ApiConfig, Settings, Timeouts
from llmproxy.errors import ProxyError, Refusal
from llmproxy.proxy.flow import Flow
from llmproxy.proxy.handler import ProxyHandler
from llmproxy.proxy.pool import UpstreamPool
from llmproxy.server.middleware import request_middleware
from llmproxy.server.routing import add_proxy_route, route_proxy_first
from llmproxy.store.base import AuditRecord
from tests.fakes.upstream import FakeUpstream
from tests.settings import with_changes

PROJECT_KEY = "sk-upstream-project-key-0123456789"


class AuthorityDouble:
    """Allows one token; a refusal can be scripted for check() or count_request()."""

    def __init__(self, token: str, grant: Grant) -> None:
        self.token = token
        self.grant = grant
        self.refuse_check: ProxyError | None = None
        self.refuse_count: ProxyError | None = None
        self.counted = 0
        self.cache_hits = 0

    async def check(self, raw_token: str) -> Grant:
        if self.refuse_check is not None:
            raise self.refuse_check
        if raw_token != self.token:
            raise ProxyError(Refusal.INVALID_TOKEN)
        return self.grant

    async def count_request(self, grant: Grant) -> None:
        if self.refuse_count is not None:
            raise self.refuse_count
        self.counted += 1

    def count_cache_hit(self, grant: Grant) -> None:
        self.cache_hits += 1


class AuditorDouble:
    def __init__(self) -> None:
        self.records: list[AuditRecord] = []

    def record(self, record: AuditRecord) -> None:
        self.records.append(record)


class Proxy:
    """One proxy under test: its client, the fake upstream behind it, and what it told others."""

    def __init__(
        self, client: TestClient, upstream: FakeUpstream, authority: AuthorityDouble, auditor: AuditorDouble
    ) -> None:
        self.client = client
        self.upstream = upstream
        self.authority = authority
        self.auditor = auditor
        self.flows: list[Flow] = []
        self.metered: list[Flow] = []  # what the usage meter saw (metered tokens' flows only)
        self.observers: list[Callable[[Flow], None]] = []  # the very list the handler holds
        self.project_key = PROJECT_KEY

    @property
    def token(self) -> str:
        return self.authority.token

    def auth(self, **headers: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}", **headers}

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """client.request with the withering token unless ``headers`` says otherwise."""
        kwargs.setdefault("headers", self.auth())
        return self.client.request(method, path, **kwargs)


MakeProxy = Callable[..., Awaitable[Proxy]]


def api_config(**changes: Any) -> ApiConfig:
    """The default ApiConfig with ``changes``; ``timeouts`` may be a dict of Timeouts fields."""
    if isinstance(changes.get("timeouts"), dict):
        changes["timeouts"] = Timeouts(**changes["timeouts"])
    return msgspec.structs.replace(ApiConfig(), **changes)


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream() as fake:
        yield fake


@pytest.fixture
async def make_proxy(upstream: FakeUpstream) -> AsyncIterator[MakeProxy]:
    clients: list[TestClient] = []

    async def make(
        *,
        observe: bool = False,
        max_request_body_bytes: int = 65536,
        max_response_body_bytes: int = 262144,
        upstream_base_url: str | None = None,
        cache: Any = None,
        limits: Limits | None = None,
        **api_changes: Any,
    ) -> Proxy:
        """A started proxy; ``api_changes`` are ApiConfig fields (``timeouts`` as a dict)."""
        settings = with_changes(
            Settings(),
            upstream={"base_url": upstream.url, "api": api_config(**api_changes)},
            events={
                "max_request_body_bytes": max_request_body_bytes,
                "max_response_body_bytes": max_response_body_bytes,
            },
        )
        grant = Grant(
            token_id="tok-1",
            project_id="proj-1",
            api_key=PROJECT_KEY,
            upstream_base_url=upstream_base_url,
            max_requests=None,
            rate_limit_per_minute=None,
            limits=limits,
        )
        authority = AuthorityDouble(generate_token(), grant)
        auditor = AuditorDouble()
        observers: list[Callable[[Flow], None]] = []
        metered: list[Flow] = []
        transport = UpstreamPool(settings.upstream.api)
        handler = ProxyHandler(
            settings.upstream,
            settings.events,
            authority,  # type: ignore[arg-type]
            auditor,  # type: ignore[arg-type]
            transport,
            cache=cache,
            observers=observers,
            meter=metered.append,
        )

        async def transport_ctx(app: web.Application) -> AsyncIterator[None]:
            yield
            await transport.aclose()

        app = web.Application(middlewares=[request_middleware])
        app.cleanup_ctx.append(transport_ctx)
        add_proxy_route(app, handler.handle)
        server = TestServer(app, host="127.0.0.1")
        # bodies as received, as `llm-proxy server` runs: TestServer(...) drops its keyword arguments
        # (aiohttp 3.14), start_server passes them on to the request handler
        await server.start_server(auto_decompress=False)
        client = TestClient(server)
        await client.start_server()
        assert client.server.runner is not None
        route_proxy_first(client.server.runner)  # as `llm-proxy server` does
        clients.append(client)
        proxy = Proxy(client, upstream, authority, auditor)
        proxy.observers = observers
        proxy.metered = metered
        if observe:
            observers.append(proxy.flows.append)
        return proxy

    yield make
    for client in clients:
        await client.close()
