"""The OpenAPI 3.1 document of the management API, built from the very Structs the handlers decode
and encode, so the schemas cannot drift from the code (the Go reference's hand-written one did)."""

from __future__ import annotations

from typing import Any

import msgspec

from llmproxy import __version__
from llmproxy.manage import schemas, usage

__all__ = ("PATHS", "document")

_REF = "#/components/schemas/{name}"
_COMPONENT_TYPES: tuple[type, ...] = (
    schemas.ProjectCreate,
    schemas.ProjectUpdate,
    schemas.ProjectOut,
    schemas.TokenCreate,
    schemas.TokenUpdate,
    schemas.TokenOut,
    schemas.TokenCreated,
    schemas.RevokeResult,
    schemas.CachePurged,
    schemas.AuditPage,
    usage.UsageReport,
    schemas.ErrorBody,
)
# name in components.responses -> (description, error.code values it may carry)
_ERRORS: dict[str, tuple[str, str]] = {
    "400": ("Invalid JSON body", "invalid_json"),
    "401": ("Missing or wrong management token (with WWW-Authenticate: Bearer)", "unauthorized"),
    "403": ("The project is inactive", "project_inactive"),
    "404": ("Unknown id (ids that are not UUIDs are unknown too)", "not_found"),
    "405": ("Method not allowed (see the Allow header)", "method_not_allowed"),
    "409": ("A project with this name already exists", "conflict"),
    "413": ("Body larger than 1 MiB", "request_too_large"),
    "422": ("A field has the wrong type, is unknown or out of range; error.param names it", "invalid_field"),
    "429": (
        "Too many wrong management tokens from this address: wait Retry-After seconds",
        "too_many_attempts",
    ),
    "503": ("The database (or, for the cache, the cache itself) is unavailable", "service_unavailable"),
}
_READ_ERRORS = ("401", "422", "503")
_BODY_ERRORS = ("400", "401", "413", "422", "503")


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF.format(name=name)}


def _json_content(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _op(
    summary: str,
    ok: tuple[str, str, dict[str, Any] | None],
    errors: tuple[str, ...],
    *,
    body: str | None = None,
    params: list[dict[str, Any]] | None = None,
    description: str | None = None,
) -> dict[str, Any]:
    status, what, schema = ok
    responses: dict[str, Any] = {status: {"description": what}}
    if schema is not None:
        responses[status]["content"] = _json_content(schema)
    guarded = {"429"} if "401" in errors else set()  # whoever checks the token throttles wrong ones
    for code in sorted(set(errors) | guarded):
        responses[code] = {"$ref": f"#/components/responses/{code}"}
    op: dict[str, Any] = {"summary": summary, "responses": responses}
    if description:
        op["description"] = description
    if params:
        op["parameters"] = params
    if body:
        op["requestBody"] = {"required": True, "content": _json_content(_ref(body))}
    return op


def _id_param(what: str) -> dict[str, Any]:
    return {
        "name": "id",
        "in": "path",
        "required": True,
        "description": f"the {what}'s UUID",
        "schema": {"type": "string", "format": "uuid"},
    }


def _query_params(struct: type) -> list[dict[str, Any]]:
    """One ``in: query`` parameter per field of a query Struct, with its JSON Schema."""
    (_,), components = msgspec.json.schema_components([struct], ref_template=_REF)
    properties = components[struct.__name__]["properties"]
    return [
        {"name": name, "in": "query", "required": False, "schema": schema}
        for name, schema in properties.items()
    ]


def _paths() -> dict[str, Any]:
    project, token = _id_param("project"), _id_param("token")
    projects = {"type": "array", "items": _ref("ProjectOut")}
    tokens = {"type": "array", "items": _ref("TokenOut")}
    return {
        "/manage/openapi.json": {
            "get": {
                **_op("This document", ("200", "OpenAPI 3.1 document", {"type": "object"}), ()),
                "security": [],
                "description": "Served without the management token: it describes the API and holds no data.",
            }
        },
        "/manage/projects": {
            "get": _op("List projects (api_key obfuscated)", ("200", "Projects", projects), ("401", "503")),
            "post": _op(
                "Create a project",
                ("201", "The project; api_key obfuscated, never echoed back", _ref("ProjectOut")),
                (*_BODY_ERRORS, "409"),
                body="ProjectCreate",
            ),
        },
        "/manage/projects/{id}": {
            "parameters": [project],
            "get": _op("Get a project", ("200", "The project", _ref("ProjectOut")), ("401", "404", "503")),
            "patch": _op(
                "Update, deactivate or reactivate a project",
                ("200", "The project after the change", _ref("ProjectOut")),
                (*_BODY_ERRORS, "404", "409"),
                body="ProjectUpdate",
                description="is_active false sets deactivated_at, true clears it; revoke_tokens (with "
                "is_active false) revokes every token of the project. Takes effect at once.",
            ),
            "delete": _op(
                "Not permitted: projects are deactivated, never deleted",
                ("405", "Always; Allow: GET, HEAD, PATCH", _ref("ErrorBody")),
                ("401",),
            ),
        },
        "/manage/projects/{id}/tokens/revoke": {
            "parameters": [project],
            "post": _op(
                "Revoke every token of a project",
                ("200", "Counts", _ref("RevokeResult")),
                ("401", "404", "503"),
            ),
        },
        "/manage/tokens": {
            "get": _op(
                "List tokens, oldest first",
                ("200", "Tokens; `token` is a hint (sk-abcd…wxyz), never the usable token", tokens),
                _READ_ERRORS,
                params=_query_params(schemas.TokenFilter),
                description="Each token carries one computed status: active, expired, revoked or "
                "exhausted (max_requests used up); active_only=true lists only the active ones.",
            ),
            "post": _op(
                "Generate a withering token",
                ("201", "The token; the raw `token` appears here and nowhere else", _ref("TokenCreated")),
                (*_BODY_ERRORS, "403", "404"),
                body="TokenCreate",
                description="duration_minutes absent: never expires; max_requests / rate_limit_per_minute "
                "absent: unlimited. max_tokens / max_cost_usd (lifetime budgets: the request crossing one "
                "completes, the next is refused with 429 budget_exceeded), tokens_per_minute and "
                "allowed_models (glob patterns; others are refused with 403 model_not_allowed) absent: none. "
                "metadata is copied into the token's events.",
            ),
        },
        "/manage/tokens/{id}": {
            "parameters": [token],
            "get": _op(
                "Get a token", ("200", "The token (hint only)", _ref("TokenOut")), ("401", "404", "503")
            ),
            "patch": _op(
                "Change a token's limits, expiry or state",
                ("200", "The token after the change", _ref("TokenOut")),
                (*_BODY_ERRORS, "404"),
                body="TokenUpdate",
            ),
            "delete": _op(
                "Revoke a token (soft delete; idempotent)",
                ("204", "Revoked, or already revoked", None),
                ("401", "404", "503"),
            ),
        },
        "/manage/cache": {
            "delete": _op(
                "Purge cached responses",
                ("200", "How many entries were deleted", _ref("CachePurged")),
                _READ_ERRORS,
                params=_query_params(schemas.CachePurgeQuery),
                description=(
                    "key: the X-PROXY-CACHE-KEY an answer showed purges that one entry. prefix: every key "
                    "starting with it, written with or without REDIS_CACHE_KEY_PREFIX: `<project_id>:` for a "
                    "project, `<project_id>:POST:/v1/chat/completions` for an endpoint. Not both (422). "
                    "Neither purges every cached response. 503 when the cache is disabled."
                ),
            ),
        },
        "/manage/usage": {
            "get": _op(
                "Usage and cost, summed by day, model, token or project",
                ("200", "The groups in key order and their total", _ref("UsageReport")),
                _READ_ERRORS,
                params=_query_params(usage.UsageFilter),
                description="Daily rows (UTC) of every forwarded request whose usage the proxy read: every "
                "request when events are published, else those of tokens or projects with a budget or "
                "tokens_per_minute. since/until are UTC days, inclusive. Tokens are the upstream's count, or "
                "the proxy's when it reported none (estimated_requests); cost_usd is from the price table "
                "(genai-prices, PRICES_PATH), null when no request of the group had a known price.",
            ),
        },
        "/manage/audit": {
            "get": _op(
                "Search the audit log, newest first",
                ("200", "One page of audit events", _ref("AuditPage")),
                _READ_ERRORS,
                params=_query_params(schemas.AuditFilter),
                description="since/until are RFC 3339 with an offset and inclusive; page_size is 1..500.",
            ),
        },
    }


PATHS: tuple[str, ...] = tuple(_paths())


def document() -> dict[str, Any]:
    """The whole OpenAPI 3.1 document as plain data, ready to encode."""
    _, components = msgspec.json.schema_components(_COMPONENT_TYPES, ref_template=_REF)
    responses = {
        status: {
            "description": f"{description} (error.code {code})",
            "content": _json_content(_ref("ErrorBody")),
        }
        for status, (description, code) in _ERRORS.items()
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "llm-proxy management API",
            "version": __version__,
            "description": "Projects, withering tokens, cache purge and the audit log. Every route but "
            "this document needs `Authorization: Bearer <MANAGEMENT_TOKEN>`. Upstream API keys are "
            "write-only (shown as sk-…abcd); a token's raw value is shown once, at creation.",
        },
        "servers": [{"url": "/"}],
        "security": [{"managementToken": []}],
        "paths": _paths(),
        "components": {
            "schemas": components,
            "responses": responses,
            "securitySchemes": {"managementToken": {"type": "http", "scheme": "bearer"}},
        },
    }
