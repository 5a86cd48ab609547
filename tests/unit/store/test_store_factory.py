"""DATABASE_URL → store: which class, which file, and a clear ConfigError for anything else."""

from __future__ import annotations

import pytest

from llmproxy.config import StoreSettings
from llmproxy.errors import ConfigError
from llmproxy.store.factory import make_store
from llmproxy.store.postgres import PostgresStore, describe_dsn
from llmproxy.store.sqlite import SqliteStore

KEY = b"k" * 32


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:///./data/llm-proxy.db", "./data/llm-proxy.db"),
        ("sqlite:///relative/path.db", "relative/path.db"),
        ("sqlite:////abs/path.db", "/abs/path.db"),
        ("sqlite:///:memory:", ":memory:"),
    ],
)
def test_sqlite_url_gives_a_sqlite_store_on_that_path(url, path):
    store = make_store(StoreSettings(database_url=url, encryption_key=KEY))
    assert isinstance(store, SqliteStore)
    assert store.path == path


@pytest.mark.parametrize("url", ["postgresql://u:pw@db:5432/proxy", "postgres://db/proxy"])
def test_postgres_url_gives_a_postgres_store(url):
    assert isinstance(make_store(StoreSettings(database_url=url)), PostgresStore)


@pytest.mark.parametrize("url", ["mysql://u@h/db", "sqlite://", "sqlite:///", "sqlite://host/db", "data.db"])
def test_unsupported_url_is_a_config_error(url):
    with pytest.raises(ConfigError):
        make_store(StoreSettings(database_url=url))


def test_unsupported_url_error_does_not_show_the_password():
    with pytest.raises(ConfigError) as refused:
        make_store(StoreSettings(database_url="mysql://root:topsecret@db/proxy"))
    assert "topsecret" not in str(refused.value)


def test_encryption_key_of_the_wrong_length_is_refused():
    with pytest.raises(ValueError, match="32 bytes"):
        make_store(StoreSettings(database_url="sqlite:///x.db", encryption_key=b"short"))


@pytest.mark.parametrize(
    ("dsn", "shown"),
    [
        ("postgresql://postgres:secret@127.0.0.1:5432/test", "postgres@127.0.0.1:5432/test"),
        ("postgres://db.internal/proxy?sslmode=require&password=secret", "db.internal/proxy"),
    ],
)
def test_database_is_described_without_password_or_query(dsn, shown):
    assert describe_dsn(dsn) == shown


def test_schema_name_must_be_a_plain_identifier():
    with pytest.raises(ValueError):
        PostgresStore("postgresql://db/proxy", None, schema='x"; DROP SCHEMA public; --')
