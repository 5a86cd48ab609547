"""``llm-proxy manage usage`` and the spend options of ``token generate|update`` and ``project
create|update``: budgets, tokens per minute, allowed models, a token's name and metadata.

``usage`` prints the report as a table (default), the API's JSON (``--json``) or CSV (``--csv``).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from collections.abc import Callable
from typing import Any, TextIO

from llmproxy.manage import tables
from llmproxy.manage.argtypes import CLEAR, limit
from llmproxy.store.spend_rows import REPORT_FIELDS

__all__ = ("USAGE_COLUMNS", "add_spend_options", "add_usage_command", "spend_fields")

_UNCHANGED: Any = argparse.SUPPRESS
_CSV_FIELDS = REPORT_FIELDS


def _cleared(value: str) -> bool:
    return value.strip().lower() in CLEAR


def _usd(value: str) -> float | None:
    if _cleared(value):
        return None
    try:
        amount = float(value.strip().lstrip("$"))
    except ValueError:
        amount = -1.0
    if not 0 <= amount < math.inf:  # NaN and infinity too (msgspec would send infinity as null: no budget)
        raise argparse.ArgumentTypeError(
            f"expected an amount in USD (like 25 or 0.50) or none, got {value!r}"
        )
    return amount


def _models(value: str) -> list[str] | None:
    if _cleared(value):
        return None
    found = [m.strip() for m in value.split(",") if m.strip()]
    if not found:
        raise argparse.ArgumentTypeError("expected comma-separated model patterns (gpt-4o*,o3) or none")
    return found


def _metadata(value: str) -> dict[str, Any] | None:
    if _cleared(value):
        return None
    try:
        data = json.loads(value)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise argparse.ArgumentTypeError(
            f'expected a JSON object like {{"team": "search"}} or none, got {value!r}'
        )
    return data


def _name(value: str) -> str | None:
    return None if _cleared(value) else value


_OPTIONS: tuple[tuple[str, Callable[[str], Any], str, str], ...] = (
    ("--max-tokens", limit, "N|none", "budget of prompt + completion tokens (lifetime)"),
    ("--max-cost-usd", _usd, "USD|none", "budget in USD (lifetime), priced by the proxy's price table"),
    ("--tokens-per-minute", limit, "N|none", "prompt + completion tokens per minute"),
)
_TOKEN_OPTIONS: tuple[tuple[str, Callable[[str], Any], str, str], ...] = (
    ("--allowed-models", _models, "PATTERNS|none", "comma-separated globs: gpt-4o*,o3 (default: any model)"),
    ("--name", _name, "NAME|none", "a name to recognise the token by"),
    ("--metadata", _metadata, "JSON|none", "a small JSON object, copied into the token's events"),
)
_FIELDS = ("max_tokens", "max_cost_usd", "tokens_per_minute")
_TOKEN_FIELDS = (*_FIELDS, "allowed_models", "name", "metadata")


def add_spend_options(parser: argparse.ArgumentParser, *, token: bool, update: bool) -> None:
    """The spend options; on ``update`` an option not given leaves the value as it is, ``none`` removes it."""
    for flag, kind, metavar, help_text in _OPTIONS + (_TOKEN_OPTIONS if token else ()):
        if token and flag == "--name" and not update:
            metavar = "NAME"
        parser.add_argument(flag, type=kind, default=_UNCHANGED, metavar=metavar, help=help_text)


def spend_fields(args: argparse.Namespace, *, token: bool) -> dict[str, Any]:
    """The spend fields given on the command line (absent ones are not in the namespace)."""
    return {
        name: getattr(args, name) for name in (_TOKEN_FIELDS if token else _FIELDS) if hasattr(args, name)
    }


# --- usage ---------------------------------------------------------------------------------------


def _usage_call(args: argparse.Namespace) -> tuple[str, str, Any, dict[str, str] | None]:
    query = {
        name: value
        for name, value in (
            ("group_by", args.group_by),
            ("project_id", args.project_id),
            ("token_id", args.token_id),
            ("model", args.model),
            ("since", args.since),
            ("until", args.until),
        )
        if value is not None
    }
    return "GET", "/manage/usage", None, query


def _cost(row: dict[str, Any]) -> str:
    cost = row.get("cost_usd")
    if cost is None:
        return "unpriced"
    note = "+" if row.get("unpriced_requests") else ""  # some requests of the group had no price
    return f"{cost:.4f}{note}"


def _key(row: dict[str, Any]) -> Any:
    key = row.get("key")
    return key if key != "" else "(no model)"


def _short_key(row: dict[str, Any]) -> Any:
    """A token's or project's id cut as every table cuts ids; a day or a model in full."""
    key = _key(row)
    is_id = isinstance(key, str) and len(key) == 36 and key.count("-") == 4
    return key[: tables.SHORT_ID] if is_id else key


USAGE_COLUMNS = (
    tables.Column("KEY", _short_key, _key, flex=True),
    tables.Column("REQUESTS", lambda row: row.get("requests")),
    tables.Column("PROMPT", lambda row: row.get("prompt_tokens")),
    tables.Column("COMPLETION", lambda row: row.get("completion_tokens")),
    tables.Column("CACHED", lambda row: row.get("cached_tokens")),
    tables.Column("COST_USD", _cost),
    tables.Column("ESTIMATED", lambda row: row.get("estimated_requests"), wide_only=True),
    tables.Column("PROJECT", lambda row: row.get("project_id"), wide_only=True),
)


def _show_usage(args: argparse.Namespace, answer: Any, out: TextIO) -> None:
    report = answer.data
    if args.csv:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(_CSV_FIELDS)
        for row in report["groups"]:
            writer.writerow(["" if row.get(f) is None else row.get(f) for f in _CSV_FIELDS])
        return
    rows = [*report["groups"], {**report["total"], "key": "TOTAL"}] if report["groups"] else []
    tables.table(rows, USAGE_COLUMNS, out, wide=args.wide)
    if any(row.get("unpriced_requests") for row in report["groups"]):
        out.write("cost: unpriced = no known price for the model; + = some requests unpriced (PRICES_PATH)\n")


def add_usage_command(nouns: Any, leaf: Callable[..., Any], project_help: str, token_help: str) -> None:
    usage = nouns.add_parser("usage", help="tokens and cost per day, model, token or project")
    p = leaf(
        _Single(usage),
        "usage",
        "usage and cost, summed by day, model, token or project",
        _usage_call,
        _show_usage,
        project_id="project",
        token_id="token",
    )
    p.add_argument("--group-by", choices=("day", "model", "token", "project"), default="day")
    p.add_argument("--project", "--project-id", dest="project_id", metavar="PROJECT", help=project_help)
    p.add_argument("--token", "--token-id", dest="token_id", metavar="TOKEN_ID", help=token_help)
    p.add_argument("--model", help="exact model name")
    p.add_argument("--since", metavar="DAY", help="first UTC day, YYYY-MM-DD")
    p.add_argument("--until", metavar="DAY", help="last UTC day, YYYY-MM-DD (inclusive)")
    p.add_argument("--csv", action="store_true", help="CSV of the groups, for a spreadsheet")


class _Single:
    """``manage usage`` has no verb: its one leaf is the ``usage`` parser itself."""

    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self._parser = parser

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        if kwargs.get("description"):
            self._parser.description = kwargs["description"]
        return self._parser
