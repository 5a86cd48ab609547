"""`llm-proxy manage` argument parsing and the requests each command makes (no network)."""

from __future__ import annotations

import argparse
import io

import pytest

from llmproxy.manage import client, commands, tables


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="manage")
    commands.add_arguments(parser)
    return parser.parse_args(list(argv))


def request_of(args: argparse.Namespace) -> tuple[object, ...]:
    return tuple(args.manage_call(args))


def test_connection_options_are_accepted_before_and_after_the_subcommand() -> None:
    before = parse("--json", "--management-token", "t1", "project", "list")
    after = parse("project", "list", "--json", "--manage-api-base-url", "http://h:1")
    assert (before.json, before.management_token, before.manage_api_base_url) == (True, "t1", None)
    assert (after.json, after.management_token, after.manage_api_base_url) == (True, None, "http://h:1")
    assert parse("project", "list").json is False


def test_an_option_before_the_subcommand_survives_the_leaf_parser() -> None:
    args = parse("--management-token", "t1", "token", "get", "abc")
    assert args.management_token == "t1"


def test_project_commands_make_the_documented_requests() -> None:
    assert request_of(parse("project", "list")) == ("GET", "/manage/projects", None, None)
    assert request_of(parse("project", "get", "P")) == ("GET", "/manage/projects/P", None, None)
    assert request_of(parse("project", "create", "--name", "n", "--api-key", "k")) == (
        "POST",
        "/manage/projects",
        {"name": "n", "api_key": "k"},
        None,
    )
    update = parse("project", "update", "P", "--active", "false", "--revoke-tokens", "--name", "m")
    assert request_of(update) == (
        "PATCH",
        "/manage/projects/P",
        {"name": "m", "is_active": False, "revoke_tokens": True},
        None,
    )


def test_token_commands_make_the_documented_requests() -> None:
    generate = parse(
        "token", "generate", "--project-id", "P", "--duration-minutes", "5", "--rate-limit-per-minute", "2"
    )
    assert request_of(generate) == (
        "POST",
        "/manage/tokens",
        {"project_id": "P", "duration_minutes": 5, "rate_limit_per_minute": 2},
        None,
    )
    assert request_of(parse("token", "list", "--project-id", "P", "--active-only")) == (
        "GET",
        "/manage/tokens",
        None,
        {"project_id": "P", "active_only": "true"},
    )
    assert request_of(parse("token", "list")) == ("GET", "/manage/tokens", None, {})
    assert request_of(parse("token", "revoke", "T")) == ("DELETE", "/manage/tokens/T", None, None)


def test_active_must_be_true_or_false(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse("project", "update", "P", "--active", "maybe")
    assert "expected true or false" in capsys.readouterr().err


async def test_a_base_url_that_is_not_http_is_exit_2() -> None:
    args = parse("--manage-api-base-url", "localhost:8080", "--management-token", "t", "project", "list")
    err = io.StringIO()
    assert await client.execute(args, out=io.StringIO(), err=err) == 2
    assert "must be an http(s) URL" in err.getvalue()


def test_a_table_aligns_its_columns() -> None:
    out = io.StringIO()
    columns = (
        tables.Column("ID", lambda r: r["id"]),
        tables.Column("NAME", lambda r: r["name"]),
        tables.Column("OK", lambda r: r["ok"]),
    )
    tables.table(
        [{"id": "a", "name": "long name", "ok": True}, {"id": "bbb", "name": None, "ok": False}], columns, out
    )
    assert out.getvalue() == "ID   NAME       OK\na    long name  yes\nbbb  -          no\n"


def test_an_id_cannot_reach_another_route() -> None:
    assert request_of(parse("project", "get", "../tokens?x=1")) == (
        "GET",
        "/manage/projects/..%2Ftokens%3Fx%3D1",
        None,
        None,
    )


def test_the_new_commands_make_the_documented_requests() -> None:
    update = parse("token", "update", "T", "--max-requests", "none", "--expires-at", "2031-01-02T03:04:05")
    assert request_of(update) == (
        "PATCH",
        "/manage/tokens/T",
        {"max_requests": None, "expires_at": "2031-01-02T03:04:05+00:00"},
        None,
    )
    assert request_of(parse("token", "update", "T", "--rate-limit-per-minute", "3")) == (
        "PATCH", "/manage/tokens/T", {"rate_limit_per_minute": 3}, None,
    )  # fmt: skip
    assert request_of(parse("project", "deactivate", "P", "--revoke-tokens")) == (
        "PATCH", "/manage/projects/P", {"is_active": False, "revoke_tokens": True}, None,
    )  # fmt: skip
    assert request_of(parse("project", "activate", "P")) == (
        "PATCH", "/manage/projects/P", {"is_active": True}, None,
    )  # fmt: skip
    audit = parse("audit", "list", "--action", "token.create", "--result", "denied", "--page", "2",
                  "--since", "2026-12-06T09:00:00+01:00")  # fmt: skip
    assert request_of(audit) == (
        "GET",
        "/manage/audit",
        None,
        {"action": "token.create", "result": "denied", "since": "2026-12-06T09:00:00+01:00", "page": "2"},
    )
    assert request_of(parse("cache", "purge")) == ("DELETE", "/manage/cache", None, {})
    assert request_of(parse("cache", "purge", "--prefix", "p1")) == (
        "DELETE",
        "/manage/cache",
        None,
        {"prefix": "p1"},
    )


def test_project_and_token_arguments_are_marked_for_name_and_prefix_lookup() -> None:
    assert parse("project", "get", "acme").manage_refs == {"id": "project"}
    assert parse("token", "generate", "--project", "acme").manage_refs == {"project_id": "project"}
    assert parse("token", "revoke", "abc").manage_refs == {"id": "token"}
    assert parse("audit", "list").manage_refs == {"project_id": "project", "token_id": "token"}


def test_a_table_shortens_its_free_text_columns_to_fit_100_columns() -> None:
    row = {"id": "7bf25ab2-dbeb-49a1-855f-136decbdd488", "name": "n" * 80, "is_active": True,
           "api_key": "sk-…WXYZ", "upstream_base_url": "https://" + "u" * 80, "created_at": "2026-12-06T09:01:37Z"}  # fmt: skip
    out = io.StringIO()
    tables.table([row], tables.PROJECT_COLUMNS, out)
    header, line = out.getvalue().splitlines()
    assert len(header) <= 100 and len(line) <= 100
    assert line.startswith("7bf25ab2  nnnn") and "…" in line and line.endswith("2026-12-06 09:01")
    wide = io.StringIO()
    tables.table([row], tables.PROJECT_COLUMNS, wide, wide=True)
    assert row["id"] in wide.getvalue() and row["upstream_base_url"] in wide.getvalue()
