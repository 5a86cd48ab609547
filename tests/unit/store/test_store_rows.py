"""SQL-independent pieces both stores share: update allow-lists, usage batching, audit paging."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from llmproxy.store.base import AuditQuery, TokenUsage
from llmproxy.store.migrate import Migration, load_migrations, pending_migrations, split_statements
from llmproxy.store.rows import (
    PROJECT_COLUMNS,
    PROJECT_UPDATABLE,
    Dialect,
    audit_filters,
    merge_usage,
    page_window,
    project_changes,
    utc,
)

T0 = datetime(2025, 1, 1, tzinfo=UTC)
DOLLAR = Dialect(placeholder=lambda i: f"${i}", time_out=utc, time_in=utc)


def test_update_sql_takes_column_names_from_the_allow_list_only():
    with pytest.raises(TypeError, match="not an updatable column"):
        DOLLAR.update_sql("projects", {"name = 'x' --": 1}, PROJECT_UPDATABLE, PROJECT_COLUMNS)


def test_update_sql_binds_every_value_as_a_parameter():
    sql, params = DOLLAR.update_sql(
        "projects", {"name": "n'; --", "is_active": False}, PROJECT_UPDATABLE, ("id",)
    )
    assert sql == "UPDATE projects SET is_active = $1, name = $2 WHERE id = $3 RETURNING id"
    assert params == [False, "n'; --"]


def test_project_changes_move_updated_at_and_seal_the_key():
    changes = project_changes({"api_key": "sk-1"}, bytes(32), T0)
    assert changes["updated_at"] == T0
    assert changes["api_key"].startswith("enc:v1:")
    assert project_changes({"updated_at": T0 - timedelta(days=1)}, None, T0)["updated_at"] == T0 - timedelta(
        days=1
    )


def test_merge_usage_sums_per_token_keeps_the_latest_time_and_sorts_by_id():
    plus_one = timezone(timedelta(hours=1))
    merged = merge_usage(
        [
            TokenUsage("b", 1, 0, T0),
            TokenUsage("a", 0, 2, None),
            TokenUsage("b", 2, 1, (T0 + timedelta(minutes=1)).astimezone(plus_one)),
            TokenUsage("b", 1, 0, T0 - timedelta(minutes=1)),
        ]
    )
    assert merged == [TokenUsage("a", 0, 2, None), TokenUsage("b", 4, 1, T0 + timedelta(minutes=1))]


@pytest.mark.parametrize(
    ("page", "size", "window"),
    [(1, 50, (50, 0)), (3, 20, (20, 40)), (0, 10, (10, 0)), (2, 0, (1, 1)), (1, 10**6, (1000, 0))],
)
def test_page_window_clamps_page_and_size(page, size, window):
    assert page_window(AuditQuery(page=page, page_size=size)) == window


def test_audit_filters_number_their_parameters_in_order():
    where, params = audit_filters(AuditQuery(action="a", actor="b", since=T0), DOLLAR)
    assert where == " WHERE action = $1 AND actor = $2 AND timestamp >= $3"
    assert params == ["a", "b", T0]
    assert audit_filters(AuditQuery(), DOLLAR) == ("", [])


def test_split_statements_keeps_quoted_semicolons_and_trigger_bodies_whole():
    script = """
    -- a comment; with a semicolon
    CREATE TABLE t (x TEXT DEFAULT 'a;b');
    CREATE TRIGGER tr AFTER INSERT ON t BEGIN UPDATE t SET x = 'c;d'; DELETE FROM t WHERE 0; END;
    """
    statements = split_statements(script)
    assert len(statements) == 2
    assert statements[0].endswith("DEFAULT 'a;b');")
    assert statements[1].startswith("CREATE TRIGGER") and statements[1].endswith("END;")


def test_shipped_migrations_are_numbered_and_the_same_for_both_dialects():
    sqlite, postgres = load_migrations("sqlite"), load_migrations("postgres")
    assert [m.name for m in sqlite] == [m.name for m in postgres]
    assert sqlite[0].name == "0001_initial"
    assert all(split_statements(m.sql) for m in sqlite)


def test_pending_migrations_are_those_not_applied_in_order():
    available = [Migration("0001_a", ""), Migration("0002_b", ""), Migration("0003_c", "")]
    assert pending_migrations(available, {"0002_b", "0009_future"}) == [available[0], available[2]]
