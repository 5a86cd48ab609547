"""`llm-proxy manage` argument parsing and the requests each command makes (no network)."""

from __future__ import annotations

import argparse
import io

import pytest

from llmproxy.manage import client


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="manage")
    client.add_arguments(parser)
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
    client._table(
        [{"id": "a", "name": "long name", "ok": True}, {"id": "bbb", "name": None, "ok": False}],
        ("id", "name", "ok"),
        out,
    )
    assert out.getvalue() == "ID   NAME       OK\na    long name  yes\nbbb  -          no\n"


def test_an_id_cannot_reach_another_route() -> None:
    assert request_of(parse("project", "get", "../tokens?x=1")) == (
        "GET",
        "/manage/projects/..%2Ftokens%3Fx%3D1",
        None,
        None,
    )
