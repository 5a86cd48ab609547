"""``llm-proxy manage``: the management API's HTTP client, and running one command with it.

A command (``commands``) is a request and a way to show the answer: ``--json`` prints the API's JSON as
it came, otherwise readable lines or a table (``tables``). A project named by its name or an id
prefix, or a token by an id prefix, is looked up first. Errors are one line on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import re
import sys
from typing import TYPE_CHECKING, Any, TextIO

import aiohttp
import msgspec

from llmproxy.manage.commands import Answer, Usage

if TYPE_CHECKING:
    from llmproxy.config import ServerSettings

__all__ = ("ManageClient", "ManageError", "execute", "resolve", "run")

TIMEOUT_SECONDS = 30.0
EXIT_FAILED = 1
EXIT_USAGE = 2
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


class ManageError(Exception):
    """The API answered with an error status."""

    def __init__(self, status: int, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.param = status, code, message, param

    def __str__(self) -> str:
        param = f" (param: {self.param})" if self.param else ""
        return f"HTTP {self.status} {self.code}: {self.message}{param}"


class NotFound(Exception):
    """No project or token matches what the command line named: exit 1."""


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


# --- names and id prefixes ---------------------------------------------------------------------

_LISTS = {"project": "/manage/projects", "token": "/manage/tokens"}


def _matches(kind: str, ref: str, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A project's exact name wins (names are unique); else every item whose id starts with ``ref``."""
    if kind == "project":
        named = [item for item in items if item.get("name") == ref]
        if named:
            return named
    prefix = ref.lower()
    return [item for item in items if str(item.get("id", "")).startswith(prefix)]


async def resolve(client: ManageClient, kind: str, ref: str) -> str:
    """The full id of the project (name, id or id prefix) or token (id or id prefix) ``ref`` names.

    A full UUID is taken as it is (no lookup); NotFound when nothing matches, Usage when several do."""
    if _UUID.fullmatch(ref):
        return ref
    items = (await client.call("GET", _LISTS[kind])).data
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise ManageError(200, "invalid_response", f"GET {_LISTS[kind]} did not answer a list")
    found = _matches(kind, ref, items)
    if not found:
        what = "named or with an id starting with" if kind == "project" else "with an id starting with"
        raise NotFound(f"no {kind} {what} {ref!r}")
    if len(found) > 1:
        ids = ", ".join(str(item["id"])[:13] + "…" for item in found[:5])
        raise Usage(f"{ref!r} is ambiguous: it matches {len(found)} {kind}s ({ids}); give more of the id")
    return str(found[0]["id"])


async def _resolve_all(client: ManageClient, args: argparse.Namespace) -> None:
    for dest, kind in getattr(args, "manage_refs", {}).items():
        ref = getattr(args, dest, None)
        if ref:
            setattr(args, dest, await resolve(client, kind, ref))


# --- running -----------------------------------------------------------------------------------


def _server(args: argparse.Namespace) -> ServerSettings:
    """The server section (MANAGEMENT_TOKEN, LLM_PROXY_URL): ``args.server``, else read once, only when a
    flag leaves one out, by the CLI's ``args.load_server`` (``config.load()``, the one reader of the
    environment)."""
    server: ServerSettings | None = getattr(args, "server", None)
    if server is None:
        server = args.server = args.load_server(args)
    return server


def _read_secret_from_stdin(args: argparse.Namespace, stdin: TextIO) -> None:
    if getattr(args, "api_key", None) == "-":
        args.api_key = stdin.readline().strip()


async def _call(args: argparse.Namespace, base_url: str, token: str) -> Answer:
    timeout = aiohttp.ClientTimeout(total=TIMEOUT_SECONDS)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        client = ManageClient(session, base_url, token)
        await _resolve_all(client, args)
        method, path, body, query = args.manage_call(args)
        return await client.call(method, path, body=body, query=query)


async def execute(
    args: argparse.Namespace,
    *,
    out: TextIO | None = None,
    err: TextIO | None = None,
    stdin: TextIO | None = None,
) -> int:
    """Run one manage command; the exit code: 0 done, 1 refused, unknown or unreachable, 2 bad usage."""
    out, err = out or sys.stdout, err or sys.stderr
    base_url = (args.manage_api_base_url or _server(args).manage_url).rstrip("/")
    if not base_url.startswith(("http://", "https://")):
        err.write(f"llm-proxy manage: --manage-api-base-url must be an http(s) URL, got {base_url!r}\n")
        return EXIT_USAGE
    token = args.management_token or _server(args).management_token
    if not token:
        err.write(
            "llm-proxy manage: a management token is required: --management-token or MANAGEMENT_TOKEN\n"
        )
        return EXIT_USAGE
    _read_secret_from_stdin(args, stdin or sys.stdin)
    try:
        answer = await _call(args, base_url, token)
    except Usage as exc:
        err.write(f"llm-proxy manage: {exc}\n")
        return EXIT_USAGE
    except (ManageError, NotFound) as exc:
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
        raw = answer.raw or msgspec.json.encode({"id": args.id, "revoked": True})  # DELETE answers 204
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
