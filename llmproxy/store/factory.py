"""``DATABASE_URL`` → the Store that serves it: ``sqlite:///relative``, ``sqlite:////absolute``, ``postgresql://…``."""

from __future__ import annotations

from llmproxy.config import StoreSettings
from llmproxy.errors import ConfigError
from llmproxy.store.base import Store
from llmproxy.store.postgres import PostgresStore
from llmproxy.store.sqlite import SqliteStore

__all__ = ("make_store", "sqlite_path")

_SQLITE = "sqlite://"
_POSTGRES = ("postgresql://", "postgres://")


def sqlite_path(url: str) -> str:
    """The file a ``sqlite:///…`` URL names: three slashes then a relative path, four for an absolute one."""
    rest = url[len(_SQLITE) :]
    if not rest.startswith("/") or len(rest) < 2:
        raise ConfigError(
            f"DATABASE_URL {url!r}: expected sqlite:///relative/path or sqlite:////absolute/path"
        )
    path = rest[1:].split("?", 1)[0]
    if not path:
        raise ConfigError(f"DATABASE_URL {url!r}: the SQLite path is empty")
    return path


def make_store(settings: StoreSettings) -> Store:
    """A Store for ``settings.database_url``, not yet opened; ConfigError for a URL it cannot serve."""
    url = settings.database_url.strip()
    if url.startswith(_SQLITE):
        return SqliteStore(sqlite_path(url), settings.encryption_key)
    if url.startswith(_POSTGRES):
        return PostgresStore(url, settings.encryption_key)
    scheme = url.split(":", 1)[0] if ":" in url else url
    raise ConfigError(f"DATABASE_URL: unsupported scheme {scheme!r} (use sqlite:/// or postgresql://)")
