"""Numbered SQL migrations shipped in ``migrations/<dialect>/NNNN_name.sql``, applied in order once each.

Each store runs them in one transaction under its own lock and records the names in
``schema_migrations``; this module only finds the files and decides what is pending.
"""

from __future__ import annotations

import logging
import re
import sqlite3
from importlib import resources
from typing import NamedTuple

__all__ = ("Migration", "load_migrations", "pending_migrations", "split_statements")

log = logging.getLogger(__name__)

_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


class Migration(NamedTuple):
    name: str  # "0001_initial": the file name without ".sql", as recorded in schema_migrations
    sql: str


def load_migrations(dialect: str) -> list[Migration]:
    """Every migration of ``dialect`` ("sqlite" or "postgres"), oldest first."""
    folder = resources.files("llmproxy.store").joinpath("migrations", dialect)
    found = sorted(entry.name for entry in folder.iterdir() if _NAME.match(entry.name))
    numbers = [name[:4] for name in found]
    if len(set(numbers)) != len(numbers):
        raise RuntimeError(f"two {dialect} migrations share a number: {found}")
    return [Migration(name[: -len(".sql")], folder.joinpath(name).read_text("utf-8")) for name in found]


def pending_migrations(available: list[Migration], applied: set[str]) -> list[Migration]:
    """The migrations not applied yet, in order."""
    unknown = applied - {m.name for m in available}
    if unknown:
        # A newer release migrated this database; its extra columns are harmless to this one.
        log.warning("database has migrations this version does not know: %s", ", ".join(sorted(unknown)))
    return [m for m in available if m.name not in applied]


def split_statements(script: str) -> list[str]:
    """Split a SQLite script into statements (triggers and quoted ';' included), so that it can run
    inside a transaction: ``executescript`` would commit first."""
    statements: list[str] = []
    current = ""
    for piece in script.split(";"):
        current += piece + ";"
        if sqlite3.complete_statement(current):
            if _has_code(current):
                statements.append(current.strip())
            current = ""
    if _has_code(current.rstrip(";")):
        raise ValueError(f"incomplete SQL statement at the end of a migration: {current.strip()[:80]!r}")
    return statements


def _has_code(sql: str) -> bool:
    lines = (line.split("--", 1)[0].strip() for line in sql.splitlines())
    return any(line and line != ";" for line in lines)
