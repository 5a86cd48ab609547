"""The /manage/* routes: projects, withering tokens, cache purge and the audit log over JSON.

Every route but the OpenAPI document is behind ``guard.Guard`` (the management token; the proxy
routes have their own auth), every change is audited and invalidated in the Authority so it applies at once.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import msgspec
from aiohttp import web
from msgspec import UNSET

from llmproxy.auth.throttle import SharedAuthThrottle
from llmproxy.auth.tokens import generate_token, hash_token, token_hint
from llmproxy.errors import ProxyError, Refusal
from llmproxy.manage import openapi
from llmproxy.manage.changes import (
    SPEND_LIMITS,
    TOKEN_FIELDS,
    base_url,
    name_taken,
    project_changes,
    refuse_obfuscated,
    spend_limits,
    token_limits,
)
from llmproxy.manage.edge import (
    json_response,
    method_not_allowed,
    no_content,
    not_found,
    path_id,
    read_body,
)
from llmproxy.manage.guard import Guard
from llmproxy.manage.schemas import (
    AuditFilter,
    CachePurged,
    CachePurgeQuery,
    ProjectCreate,
    ProjectUpdate,
    RevokeResult,
    TokenCreate,
    TokenCreated,
    TokenFilter,
    TokenUpdate,
    decode_body,
    decode_query,
)
from llmproxy.manage.usage import UsageAPI
from llmproxy.manage.views import audit_page, project_out, token_out
from llmproxy.store.base import AuditQuery, Project, Store, Token

if TYPE_CHECKING:
    from llmproxy.audit import Auditor
    from llmproxy.auth.authority import Authority
    from llmproxy.config import ServerSettings

__all__ = ("ManageAPI",)

log = logging.getLogger(__name__)

PurgeCache = Callable[[str | None], Awaitable[int]]


def _now() -> datetime:
    return datetime.now(UTC)


class ManageAPI:
    """Handlers for SPEC §5 Management; each is a small coroutine over the Store."""

    def __init__(
        self,
        server: ServerSettings,
        store: Store,
        authority: Authority,
        auditor: Auditor,
        *,
        purge_cache: PurgeCache | None = None,
        authenticate: Callable[[web.Request], Awaitable[str | None]] | None = None,  # another way in
        throttle: SharedAuthThrottle | None = None,  # wrong tokens per address; share the admin UI's
    ) -> None:
        token = server.management_token.encode()
        self._guard = Guard(token, auditor, throttle or SharedAuthThrottle(store), authenticate)
        self._audit = self._guard.audit
        self._store = store
        self._authority = authority
        self._purge_cache = purge_cache
        self._openapi = msgspec.json.encode(openapi.document())

    def routes(self) -> list[web.RouteDef]:
        g = self._guard
        return [
            web.get("/manage/openapi.json", self.openapi_document),
            web.route("*", "/manage/openapi.json", method_not_allowed("GET, HEAD")),
            web.get("/manage/projects", g(self.list_projects)),
            web.post("/manage/projects", g(self.create_project, "project.create")),
            web.route("*", "/manage/projects", g(method_not_allowed("GET, HEAD, POST"))),
            web.get("/manage/projects/{id}", g(self.get_project)),
            web.patch("/manage/projects/{id}", g(self.update_project, "project.update")),
            web.delete("/manage/projects/{id}", g(self.delete_project)),
            web.route("*", "/manage/projects/{id}", g(method_not_allowed("GET, HEAD, PATCH"))),
            web.post(
                "/manage/projects/{id}/tokens/revoke", g(self.revoke_project_tokens, "token.revoke_batch")
            ),
            web.route("*", "/manage/projects/{id}/tokens/revoke", g(method_not_allowed("POST"))),
            web.get("/manage/tokens", g(self.list_tokens)),
            web.post("/manage/tokens", g(self.create_token, "token.create")),
            web.route("*", "/manage/tokens", g(method_not_allowed("GET, HEAD, POST"))),
            web.get("/manage/tokens/{id}", g(self.get_token)),
            web.patch("/manage/tokens/{id}", g(self.update_token, "token.update")),
            web.delete("/manage/tokens/{id}", g(self.revoke_token, "token.revoke")),
            web.route("*", "/manage/tokens/{id}", g(method_not_allowed("GET, HEAD, PATCH, DELETE"))),
            web.delete("/manage/cache", g(self.purge_cache, "cache.purge")),
            web.route("*", "/manage/cache", g(method_not_allowed("DELETE"))),
            *UsageAPI(self._store).routes(g),
            web.get("/manage/audit", g(self.list_audit)),
            web.route("*", "/manage/audit", g(method_not_allowed("GET, HEAD"))),
            web.route("*", "/manage/{tail:.*}", g(not_found)),
        ]

    # -- OpenAPI

    async def openapi_document(self, request: web.Request) -> web.Response:
        """Served without the management token: it describes the API and holds no data."""
        return web.Response(body=self._openapi, content_type="application/json")

    # -- projects

    async def _project(self, project_id: str) -> Project:
        project = await self._store.get_project(project_id)
        if project is None:
            raise ProxyError(Refusal.NOT_FOUND, "Project not found")
        return project

    async def list_projects(self, request: web.Request) -> web.Response:
        return json_response([project_out(p) for p in await self._store.list_projects()])

    async def get_project(self, request: web.Request) -> web.Response:
        return json_response(project_out(await self._project(path_id(request, "Project"))))

    async def create_project(self, request: web.Request) -> web.Response:
        body = decode_body(await read_body(request), ProjectCreate)
        refuse_obfuscated(body.api_key)
        now = _now()
        project = Project(
            id=str(uuid.uuid4()),
            name=body.name.strip(),
            api_key=body.api_key,
            upstream_base_url=base_url(body.upstream_base_url),
            created_at=now,
            updated_at=now,
            max_tokens=body.max_tokens,
            max_cost_usd=body.max_cost_usd,
            tokens_per_minute=body.tokens_per_minute,
        )
        try:
            project = await self._store.create_project(project)
        except ValueError as exc:
            raise name_taken(exc, project.name) from None
        self._authority.invalidate_project(project.id)
        details = {
            "name": project.name,
            "upstream_base_url": project.upstream_base_url,
            **spend_limits(project),
        }
        self._audit("project.create", request, project_id=project.id, details=details)
        return json_response(project_out(project), status=201)

    async def update_project(self, request: web.Request) -> web.Response:
        project_id = path_id(request, "Project")
        body = decode_body(await read_body(request), ProjectUpdate)
        if body.revoke_tokens and body.is_active is not False:
            raise ProxyError(
                Refusal.INVALID_FIELD, "revoke_tokens requires is_active: false", param="revoke_tokens"
            )
        if body.api_key is not UNSET:
            refuse_obfuscated(body.api_key)
        current = await self._project(project_id)
        now = _now()
        fields = project_changes(body, current, now)
        project: Project | None = current
        if fields:
            try:
                project = await self._store.update_project(project_id, fields)
            except ValueError as exc:
                raise name_taken(exc, fields.get("name", "")) from None
            if project is None:
                raise ProxyError(Refusal.NOT_FOUND, "Project not found")
        revoked = await self._revoke_all(project_id, now) if body.revoke_tokens else None
        self._authority.invalidate_project(project_id)
        if fields:
            action = "project.deactivate" if fields.get("is_active") is False else "project.update"
            details: dict[str, Any] = {"fields": sorted(k for k in fields if k != "deactivated_at")}
            if "name" in fields:
                details["name"] = fields["name"]
            details.update({k: v for k, v in fields.items() if k in SPEND_LIMITS})
            self._audit(action, request, project_id=project_id, details=details)
        if revoked is not None:
            self._audit(
                "token.revoke_batch", request, project_id=project_id, details=msgspec.to_builtins(revoked)
            )
        assert project is not None
        return json_response(project_out(project))

    async def delete_project(self, request: web.Request) -> web.Response:
        raise ProxyError(
            Refusal.HTTP_METHOD_NOT_ALLOWED,
            'Projects cannot be deleted: deactivate one with PATCH {"is_active": false}',
            headers={"Allow": "GET, HEAD, PATCH"},
        )

    async def revoke_project_tokens(self, request: web.Request) -> web.Response:
        project_id = path_id(request, "Project")
        await self._project(project_id)
        result = await self._revoke_all(project_id, _now())
        self._audit("token.revoke_batch", request, project_id=project_id, details=msgspec.to_builtins(result))
        return json_response(result)

    async def _revoke_all(self, project_id: str, now: datetime) -> RevokeResult:
        revoked, already, total = await self._store.revoke_project_tokens(project_id, now)
        self._authority.invalidate_project(project_id)  # forgets every cached token of the project
        return RevokeResult(revoked_count=revoked, already_revoked_count=already, total_tokens=total)

    # -- tokens

    async def _token(self, token_id: str) -> Token:
        token = await self._store.get_token(token_id)
        if token is None:
            raise ProxyError(Refusal.NOT_FOUND, "Token not found")
        return token

    async def list_tokens(self, request: web.Request) -> web.Response:
        query = decode_query(request.query, TokenFilter)
        project_id = query.project_id.lower() if query.project_id else None
        tokens = await self._store.list_tokens(project_id, active_only=query.active_only)
        shown = [token_out(t) for t in tokens]  # active_only: usable now (status), not just is_active
        return json_response([t for t in shown if t.status == "active"] if query.active_only else shown)

    async def get_token(self, request: web.Request) -> web.Response:
        return json_response(token_out(await self._token(path_id(request, "Token"))))

    async def create_token(self, request: web.Request) -> web.Response:
        body = decode_body(await read_body(request), TokenCreate)
        project_id = body.project_id.lower()  # named in the audit record of a refusal too
        project = await self._store.get_project(project_id)
        if project is None:
            raise ProxyError(
                Refusal.NOT_FOUND, "Project not found", param="project_id", project_id=project_id
            )
        if not project.is_active:
            message = "Cannot create tokens for an inactive project"
            raise ProxyError(Refusal.PROJECT_INACTIVE, message, project_id=project_id)
        raw, now = generate_token(), _now()
        expires_at = None if body.duration_minutes is None else now + timedelta(minutes=body.duration_minutes)
        token = Token(
            id=str(uuid.uuid4()),
            project_id=project.id,
            token_hash=hash_token(raw),
            token_hint=token_hint(raw),
            expires_at=expires_at,
            max_requests=body.max_requests,
            rate_limit_per_minute=body.rate_limit_per_minute,
            created_at=now,
            name=body.name.strip() if body.name is not None else None,
            metadata=body.metadata,
            max_tokens=body.max_tokens,
            max_cost_usd=body.max_cost_usd,
            tokens_per_minute=body.tokens_per_minute,
            allowed_models=body.allowed_models,
        )
        try:
            token = await self._store.create_token(token)
        except ValueError:  # the project went away between the check and the insert
            raise ProxyError(
                Refusal.NOT_FOUND, "Project not found", param="project_id", project_id=project_id
            ) from None
        self._authority.invalidate_token(token.id)
        limits = token_limits(token)
        self._audit("token.create", request, project_id=project.id, token_id=token.id, details=limits)
        shown = {name: getattr(token, name) for name in TokenCreated.__struct_fields__ if name != "token"}
        return json_response(TokenCreated(token=raw, **shown), status=201)

    async def update_token(self, request: web.Request) -> web.Response:
        token_id = path_id(request, "Token")
        body = decode_body(await read_body(request), TokenUpdate)
        current = await self._token(token_id)
        fields: dict[str, Any] = {}
        if body.is_active is not UNSET and body.is_active != current.is_active:
            fields["is_active"] = body.is_active
            fields["deactivated_at"] = None if body.is_active else _now()
        for name in TOKEN_FIELDS:
            value = getattr(body, name)
            if value is not UNSET:
                fields[name] = value.strip() if name == "name" and value is not None else value
        if not fields:
            return json_response(token_out(current))
        token = await self._store.update_token(token_id, fields)
        if token is None:
            raise ProxyError(Refusal.NOT_FOUND, "Token not found")
        self._authority.invalidate_token(token_id)
        action = "token.revoke" if fields.get("is_active") is False else "token.update"
        details = {"fields": sorted(k for k in fields if k != "deactivated_at"), **token_limits(token)}
        self._audit(action, request, project_id=token.project_id, token_id=token_id, details=details)
        return json_response(token_out(token))

    async def revoke_token(self, request: web.Request) -> web.Response:
        token_id = path_id(request, "Token")
        current = await self._token(token_id)
        if current.is_active:
            await self._store.update_token(token_id, {"is_active": False, "deactivated_at": _now()})
        self._authority.invalidate_token(token_id)
        details = {"already_revoked": not current.is_active}
        self._audit(
            "token.revoke", request, project_id=current.project_id, token_id=token_id, details=details
        )
        return no_content()

    # -- cache and audit

    async def purge_cache(self, request: web.Request) -> web.Response:
        query = decode_query(request.query, CachePurgeQuery)
        prefix = query.key or query.prefix  # a whole key (it ends in its digest) is a prefix of itself only
        if self._purge_cache is None:
            raise ProxyError(Refusal.SERVICE_UNAVAILABLE, "The response cache is disabled")
        try:
            deleted = await self._purge_cache(prefix)
        except ProxyError:
            raise
        except Exception as exc:  # the cache backend (Redis) is down: say so, not a 500
            log.warning("management API: cache purge failed: %s", exc)
            raise ProxyError(Refusal.SERVICE_UNAVAILABLE, "The response cache is unavailable") from None
        self._audit("cache.purge", request, details={"prefix": prefix, "deleted": deleted})
        return json_response(CachePurged(deleted=deleted))

    async def list_audit(self, request: web.Request) -> web.Response:
        query = decode_query(request.query, AuditFilter)
        records, total = await self._store.list_audit(AuditQuery(**msgspec.structs.asdict(query)))
        return json_response(audit_page(records, total, query.page, query.page_size))
