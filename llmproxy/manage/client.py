"""``llm-proxy manage``: the management API's HTTP client and the project/token commands on top of it.

Each command is a request (method, path, body, query) and a way to show the answer: ``--json`` prints
the API's JSON as it came, otherwise readable lines or a table. HTTP errors are one line on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import sys
from collections.abc import Callable, Sequence
from typing import Any, TextIO
from urllib.parse import quote

import aiohttp
import msgspec

__all__ = ("ManageClient", "ManageError", "add_arguments", "execute", "run")

DEFAULT_BASE_URL = "http://localhost:8080"
TIMEOUT_SECONDS = 30.0
EXIT_FAILED = 1
EXIT_USAGE = 2


class ManageError(Exception):
    """The API answered with an error status."""

    def __init__(self, status: int, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.param = status, code, message, param

    def __str__(self) -> str:
        param = f" (param: {self.param})" if self.param else ""
        return f"HTTP {self.status} {self.code}: {self.message}{param}"


class Answer(msgspec.Struct, frozen=True):
    """A successful response: the body as sent, and decoded (None when there is none)."""

    status: int
    raw: bytes
    data: Any


class ManageClient:
    """Calls /manage/* with the management token; raises ManageError for error statuses."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str, management_token: str) -> None:
        self._session = session
        self._base_url = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {management_token}", "Accept": "application/json"}

    async def call(
        self, method: str, path: str, *, body: Any = None, query: dict[str, str] | None = None
    ) -> Answer:
        headers = dict(self._headers)
        data = None
        if body is not None:
            data = msgspec.json.encode(body)
            headers["Content-Type"] = "application/json"
        url = f"{self._base_url}{path}"
        async with self._session.request(method, url, data=data, params=query, headers=headers) as response:
            raw = await response.read()
            if response.status >= 400:
                raise _error(response.status, raw)
            try:
                return Answer(response.status, raw, msgspec.json.decode(raw) if raw else None)
            except msgspec.DecodeError:
                raise ManageError(response.status, "invalid_response", "the answer is not JSON") from None


def _error(status: int, raw: bytes) -> ManageError:
    try:
        err = msgspec.json.decode(raw)["error"]
        return ManageError(
            status, str(err.get("code", "error")), str(err.get("message", "")), err.get("param")
        )
    except (msgspec.DecodeError, KeyError, TypeError, AttributeError):
        text = raw.decode("utf-8", "replace").strip().replace("\n", " ")[:200]
        return ManageError(status, "error", text or "no error message")


# --- commands: (method, path, body, query) from the arguments ------------------------------------

Call = tuple[str, str, Any, dict[str, str] | None]


def _segment(value: str) -> str:
    """An id as one path segment: ``a/b`` or ``?x`` cannot reach another route."""
    return quote(value, safe="")


def _drop_none(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def _project_list(args: argparse.Namespace) -> Call:
    return "GET", "/manage/projects", None, None


def _project_get(args: argparse.Namespace) -> Call:
    return "GET", f"/manage/projects/{_segment(args.id)}", None, None


def _project_create(args: argparse.Namespace) -> Call:
    body = _drop_none(name=args.name, api_key=args.api_key, upstream_base_url=args.upstream_base_url)
    return "POST", "/manage/projects", body, None


def _project_update(args: argparse.Namespace) -> Call:
    body = _drop_none(
        name=args.name, api_key=args.api_key, upstream_base_url=args.upstream_base_url, is_active=args.active
    )
    if args.revoke_tokens:
        body["revoke_tokens"] = True
    if not body:
        raise _Usage(
            "nothing to update: give --name, --api-key, --upstream-base-url, --active or --revoke-tokens"
        )
    return "PATCH", f"/manage/projects/{_segment(args.id)}", body, None


def _token_generate(args: argparse.Namespace) -> Call:
    body = _drop_none(
        project_id=args.project_id,
        duration_minutes=args.duration_minutes,
        max_requests=args.max_requests,
        rate_limit_per_minute=args.rate_limit_per_minute,
    )
    return "POST", "/manage/tokens", body, None


def _token_list(args: argparse.Namespace) -> Call:
    query = _drop_none(project_id=args.project_id, active_only="true" if args.active_only else None)
    return "GET", "/manage/tokens", None, query


def _token_get(args: argparse.Namespace) -> Call:
    return "GET", f"/manage/tokens/{_segment(args.id)}", None, None


def _token_revoke(args: argparse.Namespace) -> Call:
    return "DELETE", f"/manage/tokens/{_segment(args.id)}", None, None


class _Usage(Exception):
    """A command line that cannot make a request: exit 2."""


# --- showing answers ---------------------------------------------------------------------------

_PROJECT_COLUMNS = ("id", "name", "is_active", "api_key", "upstream_base_url", "created_at")
_TOKEN_COLUMNS = ("id", "project_id", "token", "is_active", "request_count", "max_requests", "expires_at")


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def _table(rows: list[dict[str, Any]], columns: Sequence[str], out: TextIO) -> None:
    if not rows:
        out.write("(none)\n")
        return
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    header = [c.upper() for c in columns]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(header)]
    for line in (header, *cells):
        out.write("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip() + "\n")


def _fields(data: dict[str, Any], out: TextIO) -> None:
    width = max(len(k) for k in data)
    for key, value in data.items():
        out.write(f"{key.ljust(width)}  {_cell(value)}\n")


def _show_projects(args: argparse.Namespace, answer: Answer, out: TextIO) -> None:
    _table(answer.data, _PROJECT_COLUMNS, out)


def _show_tokens(args: argparse.Namespace, answer: Answer, out: TextIO) -> None:
    _table(answer.data, _TOKEN_COLUMNS, out)


def _show_object(args: argparse.Namespace, answer: Answer, out: TextIO) -> None:
    _fields(answer.data, out)


def _show_new_token(args: argparse.Namespace, answer: Answer, out: TextIO) -> None:
    _fields(answer.data, out)
    out.write("\nThis is the only time the token is shown: store it now.\n")


def _show_revoked(args: argparse.Namespace, answer: Answer, out: TextIO) -> None:
    out.write(f"Token {args.id} revoked\n")


def _revoked_json(args: argparse.Namespace, answer: Answer) -> bytes:
    return msgspec.json.encode({"id": args.id, "revoked": True})


# --- argparse ----------------------------------------------------------------------------------

Show = Callable[[argparse.Namespace, Answer, TextIO], None]


def _active(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("true", "yes", "1"):
        return True
    if lowered in ("false", "no", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def _add_connection_options(parser: argparse.ArgumentParser, *, leaf: bool) -> None:
    """The options every manage command takes, before or after the subcommand. On the leaves they
    default to SUPPRESS, so that a value given before the subcommand survives."""
    unset: Any = argparse.SUPPRESS if leaf else None
    parser.add_argument(
        "--manage-api-base-url",
        metavar="URL",
        default=unset,
        help=f"management API base URL (default {DEFAULT_BASE_URL})",
    )
    parser.add_argument(
        "--management-token",
        metavar="TOKEN",
        default=unset,
        help="management token (default: MANAGEMENT_TOKEN)",
    )
    parser.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS if leaf else False, help="print raw JSON"
    )


def _leaf(
    verbs: Any, name: str, help_text: str, call: Callable[[argparse.Namespace], Call], show: Show
) -> Any:
    parser = verbs.add_parser(name, help=help_text)
    _add_connection_options(parser, leaf=True)
    parser.set_defaults(manage_call=call, manage_show=show)
    return parser


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Fill the ``manage`` parser: ``project list/get/create/update``, ``token generate/list/get/revoke``."""
    _add_connection_options(parser, leaf=False)
    nouns = parser.add_subparsers(dest="manage_noun", metavar="{project,token}", required=True)

    projects = nouns.add_parser("project", help="projects: an upstream API key and its tokens")
    verbs = projects.add_subparsers(dest="manage_verb", metavar="{list,get,create,update}", required=True)
    _leaf(verbs, "list", "list projects", _project_list, _show_projects)
    _leaf(verbs, "get", "show one project", _project_get, _show_object).add_argument("id")
    p = _leaf(verbs, "create", "create a project", _project_create, _show_object)
    p.add_argument("--name", required=True)
    p.add_argument("--api-key", required=True, help="upstream API key; '-' reads it from stdin")
    p.add_argument("--upstream-base-url", metavar="URL", help="override UPSTREAM_BASE_URL for this project")
    p = _leaf(verbs, "update", "change a project", _project_update, _show_object)
    p.add_argument("id")
    p.add_argument("--name")
    p.add_argument("--api-key", help="new upstream API key; '-' reads it from stdin")
    p.add_argument("--upstream-base-url", metavar="URL")
    p.add_argument("--active", type=_active, metavar="true|false", help="activate or deactivate")
    p.add_argument("--revoke-tokens", action="store_true", help="with --active false: revoke every token")

    tokens = nouns.add_parser("token", help="withering tokens")
    verbs = tokens.add_subparsers(dest="manage_verb", metavar="{generate,list,get,revoke}", required=True)
    p = _leaf(verbs, "generate", "generate a token (shown once)", _token_generate, _show_new_token)
    p.add_argument("--project-id", required=True)
    p.add_argument("--duration-minutes", type=int, help="lifetime; never expires if absent")
    p.add_argument("--max-requests", type=int, help="request quota; unlimited if absent")
    p.add_argument("--rate-limit-per-minute", type=int, help="unlimited if absent")
    p = _leaf(verbs, "list", "list tokens", _token_list, _show_tokens)
    p.add_argument("--project-id")
    p.add_argument("--active-only", action="store_true")
    _leaf(verbs, "get", "show one token", _token_get, _show_object).add_argument("id")
    _leaf(verbs, "revoke", "revoke a token", _token_revoke, _show_revoked).add_argument("id")


# --- running -----------------------------------------------------------------------------------


def _management_token(args: argparse.Namespace) -> str:
    """--management-token, else MANAGEMENT_TOKEN from the settings the CLI passes (``args.settings``),
    else from ``config.load()``: the one reader of the environment."""
    if args.management_token:
        return str(args.management_token)
    settings = getattr(args, "settings", None)
    if settings is None:
        from llmproxy import config

        settings = config.load(config_file=getattr(args, "config", None))
    return str(settings.server.management_token)


def _read_secret_from_stdin(args: argparse.Namespace, stdin: TextIO) -> None:
    if getattr(args, "api_key", None) == "-":
        args.api_key = stdin.readline().strip()


async def execute(
    args: argparse.Namespace,
    *,
    out: TextIO | None = None,
    err: TextIO | None = None,
    stdin: TextIO | None = None,
) -> int:
    """Run one manage command; the exit code: 0 done, 1 refused or unreachable, 2 bad usage."""
    out, err = out or sys.stdout, err or sys.stderr
    base_url = (args.manage_api_base_url or DEFAULT_BASE_URL).rstrip("/")
    if not base_url.startswith(("http://", "https://")):
        err.write(f"llm-proxy manage: --manage-api-base-url must be an http(s) URL, got {base_url!r}\n")
        return EXIT_USAGE
    token = _management_token(args)
    if not token:
        err.write(
            "llm-proxy manage: a management token is required: --management-token or MANAGEMENT_TOKEN\n"
        )
        return EXIT_USAGE
    _read_secret_from_stdin(args, stdin or sys.stdin)
    try:
        method, path, body, query = args.manage_call(args)
    except _Usage as exc:
        err.write(f"llm-proxy manage: {exc}\n")
        return EXIT_USAGE
    timeout = aiohttp.ClientTimeout(total=TIMEOUT_SECONDS)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session:
            answer = await ManageClient(session, base_url, token).call(method, path, body=body, query=query)
    except ManageError as exc:
        err.write(f"llm-proxy manage: {exc}\n")
        return EXIT_FAILED
    except TimeoutError:
        err.write(f"llm-proxy manage: no answer from {base_url} within {TIMEOUT_SECONDS:g}s\n")
        return EXIT_FAILED
    except aiohttp.ClientError as exc:
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        err.write(f"llm-proxy manage: cannot reach the management API at {base_url}: {reason}\n")
        return EXIT_FAILED
    if args.json:
        raw = answer.raw or _revoked_json(args, answer)
        out.write(raw.decode() + ("" if raw.endswith(b"\n") else "\n"))
        return 0
    shown = io.StringIO()
    try:
        args.manage_show(args, answer, shown)
    except (AttributeError, TypeError, KeyError, ValueError):
        err.write(
            f"llm-proxy manage: unexpected answer from {base_url}: is it the llm-proxy management API?\n"
        )
        return EXIT_FAILED
    out.write(shown.getvalue())
    return 0


def run(args: argparse.Namespace) -> int:
    """Entry point of ``llm-proxy manage``."""
    return asyncio.run(execute(args))
