"""The ``llm-proxy manage`` commands: their arguments, the request each makes, how its answer shows.

A leaf parser sets ``manage_call`` (arguments → method, path, body, query), ``manage_show`` (answer →
text) and ``manage_refs`` (which arguments name a project or a token, so that ``client`` can turn a
name or an id prefix into the full id before the call).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO
from urllib.parse import quote

import msgspec

from llmproxy.config import ServerSettings
from llmproxy.manage import tables
from llmproxy.manage.argtypes import active, expiry, limit, moment
from llmproxy.manage.spend_commands import add_spend_options, add_usage_command, spend_fields

__all__ = ("DEFAULT_URL", "Answer", "Call", "Usage", "add_arguments", "add_connection_options")

Call = tuple[str, str, Any, dict[str, str] | None]
DEFAULT_URL = ServerSettings().manage_url


class Usage(Exception):
    """A command line that cannot make a request: exit 2."""


class Answer(msgspec.Struct, frozen=True):
    """A successful response: the body as sent, and decoded (None when there is none)."""

    status: int
    raw: bytes
    data: Any


def _segment(value: str) -> str:
    """An id as one path segment: ``a/b`` or ``?x`` cannot reach another route."""
    return quote(value, safe="")


def _drop_none(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


# --- requests ----------------------------------------------------------------------------------


def _project_list(args: argparse.Namespace) -> Call:
    return "GET", "/manage/projects", None, None


def _project_get(args: argparse.Namespace) -> Call:
    return "GET", f"/manage/projects/{_segment(args.id)}", None, None


def _project_create(args: argparse.Namespace) -> Call:
    body = _drop_none(name=args.name, api_key=args.api_key, upstream_base_url=args.upstream_base_url)
    body.update(_drop_none(**spend_fields(args, token=False)))
    return "POST", "/manage/projects", body, None


def _project_update(args: argparse.Namespace) -> Call:
    body = _drop_none(
        name=args.name, api_key=args.api_key, upstream_base_url=args.upstream_base_url, is_active=args.active
    )
    if args.revoke_tokens:
        body["revoke_tokens"] = True
    body.update(spend_fields(args, token=False))
    if not body:
        raise Usage(
            "nothing to update: give --name, --api-key, --upstream-base-url, --active, --revoke-tokens,"
            " --max-tokens, --max-cost-usd or --tokens-per-minute"
        )
    return "PATCH", f"/manage/projects/{_segment(args.id)}", body, None


def _project_deactivate(args: argparse.Namespace) -> Call:
    body: dict[str, Any] = {"is_active": False}
    if args.revoke_tokens:
        body["revoke_tokens"] = True
    return "PATCH", f"/manage/projects/{_segment(args.id)}", body, None


def _project_activate(args: argparse.Namespace) -> Call:
    return "PATCH", f"/manage/projects/{_segment(args.id)}", {"is_active": True}, None


def _token_generate(args: argparse.Namespace) -> Call:
    body = _drop_none(
        project_id=args.project_id,
        duration_minutes=args.duration_minutes,
        max_requests=args.max_requests,
        rate_limit_per_minute=args.rate_limit_per_minute,
        **spend_fields(args, token=True),
    )
    return "POST", "/manage/tokens", body, None


def _token_list(args: argparse.Namespace) -> Call:
    query = _drop_none(project_id=args.project_id, active_only="true" if args.active_only else None)
    return "GET", "/manage/tokens", None, query


def _token_get(args: argparse.Namespace) -> Call:
    return "GET", f"/manage/tokens/{_segment(args.id)}", None, None


def _token_update(args: argparse.Namespace) -> Call:
    body: dict[str, Any] = {}
    for name in ("max_requests", "rate_limit_per_minute", "expires_at"):
        if hasattr(args, name):  # not given: stays as it is (None would remove it)
            body[name] = getattr(args, name)
    if args.duration_minutes is not None:
        body["expires_at"] = (datetime.now(UTC) + timedelta(minutes=args.duration_minutes)).isoformat()
    body.update(spend_fields(args, token=True))
    if not body:
        raise Usage(
            "nothing to update: give --max-requests, --rate-limit-per-minute, --expires-at, --duration-minutes,"
            " --max-tokens, --max-cost-usd, --tokens-per-minute, --allowed-models, --name or --metadata"
        )
    return "PATCH", f"/manage/tokens/{_segment(args.id)}", body, None


def _token_revoke(args: argparse.Namespace) -> Call:
    return "DELETE", f"/manage/tokens/{_segment(args.id)}", None, None


def _audit_list(args: argparse.Namespace) -> Call:
    query = _drop_none(
        action=args.action,
        result=args.result,
        project_id=args.project_id,
        token_id=args.token_id,
        request_id=args.request_id,
        actor=args.actor,
        since=args.since,
        until=args.until,
        page=args.page,
        page_size=args.page_size,
    )
    return "GET", "/manage/audit", None, {k: str(v) for k, v in query.items()}


def _cache_purge(args: argparse.Namespace) -> Call:
    return "DELETE", "/manage/cache", None, _drop_none(prefix=args.prefix)


# --- answers -----------------------------------------------------------------------------------

Show = Callable[[argparse.Namespace, Answer, TextIO], None]


def _show_rows(columns: tuple[tables.Column, ...]) -> Show:
    return lambda args, answer, out: tables.table(answer.data, columns, out, wide=args.wide)


def _show_object(args: argparse.Namespace, answer: Answer, out: TextIO) -> None:
    tables.fields(answer.data, out)


def _show_new_token(args: argparse.Namespace, answer: Answer, out: TextIO) -> None:
    tables.fields(answer.data, out)
    out.write("\nThis is the only time the token is shown: store it now.\n")


def _show_revoked(args: argparse.Namespace, answer: Answer, out: TextIO) -> None:
    out.write(f"Token {args.id} revoked\n")


def _show_audit(args: argparse.Namespace, answer: Answer, out: TextIO) -> None:
    page = answer.data
    tables.table(page["events"], tables.AUDIT_COLUMNS, out, wide=args.wide)
    more = f"; --page {page['page'] + 1} for more" if page["page"] < page["total_pages"] else ""
    out.write(f"page {page['page']} of {max(page['total_pages'], 1)}, {page['total_count']} events{more}\n")


def _show_purged(args: argparse.Namespace, answer: Answer, out: TextIO) -> None:
    scope = f" under {args.prefix!r}" if args.prefix else ""
    out.write(f"Purged {answer.data['deleted']} cached responses{scope}\n")


# --- argparse ----------------------------------------------------------------------------------

_UNCHANGED: Any = argparse.SUPPRESS  # a token update option not given stays as it is
_PROJECT_HELP = "the project's name, id, or a unique start of its id"
_TOKEN_HELP = "the token's id, or a unique start of it"


def add_connection_options(parser: argparse.ArgumentParser, *, leaf: bool) -> None:
    """The options every manage command takes, before or after the subcommand. On the leaves they
    default to SUPPRESS, so that a value given before the subcommand survives."""
    unset: Any = argparse.SUPPRESS if leaf else None
    parser.add_argument(
        "--manage-api-base-url",
        metavar="URL",
        default=unset,
        help=f"the server's base URL (default: LLM_PROXY_URL, else {DEFAULT_URL})",
    )
    parser.add_argument(
        "--management-token",
        metavar="TOKEN",
        default=unset,
        help="management token (default: MANAGEMENT_TOKEN)",
    )
    off: Any = argparse.SUPPRESS if leaf else False
    parser.add_argument("--json", action="store_true", default=off, help="print the API's JSON as it came")
    parser.add_argument(
        "--wide", action="store_true", default=off, help="tables: full ids and times, every column"
    )


def _leaf(
    verbs: Any, name: str, help_text: str, call: Callable[[argparse.Namespace], Call], show: Show, **refs: str
) -> Any:
    parser = verbs.add_parser(name, help=help_text, description=help_text)
    add_connection_options(parser, leaf=True)
    parser.set_defaults(manage_call=call, manage_show=show, manage_refs=refs)
    return parser


def _add_project_commands(nouns: Any) -> None:
    projects = nouns.add_parser("project", help="projects: an upstream API key and its tokens")
    verbs = projects.add_subparsers(
        dest="manage_verb", metavar="{list,get,create,update,deactivate,activate}", required=True
    )
    _leaf(verbs, "list", "list projects", _project_list, _show_rows(tables.PROJECT_COLUMNS))
    p = _leaf(verbs, "get", "show one project", _project_get, _show_object, id="project")
    p.add_argument("id", metavar="PROJECT", help=_PROJECT_HELP)
    p = _leaf(verbs, "create", "create a project", _project_create, _show_object)
    p.add_argument("--name", required=True)
    p.add_argument("--api-key", required=True, help="upstream API key; '-' reads it from stdin")
    p.add_argument("--upstream-base-url", metavar="URL", help="override UPSTREAM_BASE_URL for this project")
    add_spend_options(p, token=False, update=False)
    p = _leaf(verbs, "update", "change a project", _project_update, _show_object, id="project")
    p.add_argument("id", metavar="PROJECT", help=_PROJECT_HELP)
    p.add_argument("--name")
    p.add_argument("--api-key", help="new upstream API key; '-' reads it from stdin")
    p.add_argument("--upstream-base-url", metavar="URL")
    p.add_argument("--active", type=active, metavar="true|false", help="activate or deactivate")
    p.add_argument("--revoke-tokens", action="store_true", help="with --active false: revoke every token")
    add_spend_options(p, token=False, update=True)
    p = _leaf(
        verbs,
        "deactivate",
        "deactivate a project: its tokens are refused (403) until it is activated again",
        _project_deactivate,
        _show_object,
        id="project",
    )
    p.add_argument("id", metavar="PROJECT", help=_PROJECT_HELP)
    p.add_argument("--revoke-tokens", action="store_true", help="also revoke every token, for good")
    p = _leaf(verbs, "activate", "activate a project again", _project_activate, _show_object, id="project")
    p.add_argument("id", metavar="PROJECT", help=_PROJECT_HELP)


def _add_token_commands(nouns: Any) -> None:
    tokens = nouns.add_parser("token", help="withering tokens")
    verbs = tokens.add_subparsers(
        dest="manage_verb", metavar="{generate,list,get,update,revoke}", required=True
    )
    p = _leaf(
        verbs,
        "generate",
        "generate a token (shown once)",
        _token_generate,
        _show_new_token,
        project_id="project",
    )
    p.add_argument(
        "--project", "--project-id", dest="project_id", metavar="PROJECT", required=True, help=_PROJECT_HELP
    )
    p.add_argument("--duration-minutes", type=int, help="lifetime; never expires if absent")
    p.add_argument("--max-requests", type=int, help="request quota; unlimited if absent")
    p.add_argument("--rate-limit-per-minute", type=int, help="unlimited if absent")
    add_spend_options(p, token=True, update=False)
    p = _leaf(
        verbs, "list", "list tokens", _token_list, _show_rows(tables.TOKEN_COLUMNS), project_id="project"
    )
    p.add_argument("--project", "--project-id", dest="project_id", metavar="PROJECT", help=_PROJECT_HELP)
    p.add_argument(
        "--active-only",
        action="store_true",
        help="only tokens usable now (not revoked, expired or exhausted)",
    )
    p = _leaf(verbs, "get", "show one token", _token_get, _show_object, id="token")
    p.add_argument("id", metavar="TOKEN_ID", help=_TOKEN_HELP)
    p = _leaf(verbs, "update", "change a token's limits or expiry", _token_update, _show_object, id="token")
    p.add_argument("id", metavar="TOKEN_ID", help=_TOKEN_HELP)
    p.add_argument("--max-requests", type=limit, default=_UNCHANGED, metavar="N|none", help="request quota")
    p.add_argument("--rate-limit-per-minute", type=limit, default=_UNCHANGED, metavar="N|none")
    when = p.add_mutually_exclusive_group()
    when.add_argument(
        "--expires-at",
        type=expiry,
        default=_UNCHANGED,
        metavar="TIME|never",
        help="RFC 3339; UTC without an offset",
    )
    when.add_argument("--duration-minutes", type=int, metavar="N", help="expire N minutes from now")
    add_spend_options(p, token=True, update=True)
    p = _leaf(verbs, "revoke", "revoke a token", _token_revoke, _show_revoked, id="token")
    p.add_argument("id", metavar="TOKEN_ID", help=_TOKEN_HELP)


def _add_audit_and_cache_commands(nouns: Any) -> None:
    audit = nouns.add_parser("audit", help="the audit log")
    verbs = audit.add_subparsers(dest="manage_verb", metavar="{list}", required=True)
    p = _leaf(
        verbs,
        "list",
        "search the audit log, newest first",
        _audit_list,
        _show_audit,
        project_id="project",
        token_id="token",
    )
    p.add_argument("--action", help="e.g. token.create, project.update, admin.login")
    p.add_argument("--result", choices=("success", "denied", "error"))
    p.add_argument("--project", "--project-id", dest="project_id", metavar="PROJECT", help=_PROJECT_HELP)
    p.add_argument("--token-id", metavar="TOKEN_ID", help=_TOKEN_HELP)
    p.add_argument("--request-id")
    p.add_argument("--actor", help="management_api, admin_ui, system")
    p.add_argument("--since", type=moment, metavar="TIME", help="RFC 3339, or a duration ago: 30m, 2h")
    p.add_argument("--until", type=moment, metavar="TIME", help="RFC 3339, or a duration ago")
    p.add_argument("--page", type=int, help="1 = newest (default 1)")
    p.add_argument("--page-size", type=int, help="1..500 (default 50)")

    cache = nouns.add_parser("cache", help="the HTTP response cache")
    verbs = cache.add_subparsers(dest="manage_verb", metavar="{purge}", required=True)
    p = _leaf(verbs, "purge", "delete cached responses", _cache_purge, _show_purged)
    p.add_argument("--prefix", help="only keys starting with this (default: every cached response)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Fill the ``manage`` parser: project, token, usage, audit and cache commands."""
    add_connection_options(parser, leaf=False)
    nouns = parser.add_subparsers(
        dest="manage_noun", metavar="{project,token,usage,audit,cache}", required=True
    )
    _add_project_commands(nouns)
    _add_token_commands(nouns)
    add_usage_command(nouns, _leaf, _PROJECT_HELP, _TOKEN_HELP)
    _add_audit_and_cache_commands(nouns)
