"""Settings: read once from defaults < YAML ``--config`` < environment < command-line flags.

This is the only module that reads ``os.environ``. ``load()`` builds every section once, frozen;
a component receives the frozen section it uses (``build_app`` hands them out), not the whole.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec
import yaml

from llmproxy import redis_keys
from llmproxy.config_prices import ModelPrice, load_prices
from llmproxy.config_values import (
    boolean,
    choice,
    database_url,
    encryption_key,
    integer,
    listen_addr,
    parse_duration,
    positive_duration,
    services,
    text,
    upstream_url,
)
from llmproxy.errors import ConfigError

__all__ = ("ApiConfig", "Settings", "load", "load_api_config", "parse_duration")


class Timeouts(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    connect: float = 10.0
    response_header: float = 60.0
    request: float = 600.0  # whole upstream exchange, streams included
    idle_connection: float = 90.0


class ApiConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What the proxy lets through (API_CONFIG_PATH YAML)."""

    allowed_endpoints: tuple[str, ...] = (
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/models",
        "/v1/models/*",
        "/v1/responses",
        "/v1/responses/*",
        "/v1/moderations",
        "/v1/images/*",
        "/v1/audio/*",
        "/v1/files",
        "/v1/files/*",
    )
    allowed_methods: tuple[str, ...] = ("GET", "POST", "DELETE", "OPTIONS")
    param_whitelist: dict[str, tuple[str, ...]] = {}
    allowed_origins: tuple[str, ...] = ()
    required_headers: tuple[str, ...] = ()
    max_body_bytes: int = 32 * 1024 * 1024
    timeouts: Timeouts = Timeouts()
    # Upstream exchanges in flight (0: no limit). A stream holds one for its whole life, so this is how
    # many open streams an instance serves: 10,000 is what a 2 vCPU instance is sized for (~25-40 KB and
    # 2 fds each; docs/performance.md, "Open streams"), where 200 made the 201st stream wait, then 504.
    max_connections: int = 10_000
    max_connections_per_host: int = 0  # 0 = no per-host limit


class ServerSettings(msgspec.Struct, frozen=True):
    listen_addr: str = "127.0.0.1:8080"
    management_token: str = ""
    shutdown_timeout: float = 30.0
    manage_url: str = "http://127.0.0.1:8080"  # LLM_PROXY_URL: the server `llm-proxy manage` calls
    client_header_timeout: float = 10.0  # a request head (line + headers) must be complete within this
    client_body_timeout: float = 30.0  # longest a request body may make no progress (then 408)
    client_keepalive_timeout: float = 75.0  # an idle keep-alive connection is closed after this
    client_send_timeout: float = 60.0  # longest a client may take none of the bytes waiting for it


class UpstreamSettings(msgspec.Struct, frozen=True):
    base_url: str = "https://api.openai.com"
    api_config_path: str = ""
    api: ApiConfig = ApiConfig()


class StoreSettings(msgspec.Struct, frozen=True):
    database_url: str = "sqlite:///./data/llm-proxy.db"
    encryption_key: bytes | None = None  # 32 raw bytes


class AuthSettings(msgspec.Struct, frozen=True):
    key_cache_ttl: float = 30.0
    key_cache_max: int = 10000
    rate_limit_backend: str = "auto"
    redis_prefix: str = redis_keys.PREFIX  # rate-limit keys, invalidation channel; not an env var


class RedisSettings(msgspec.Struct, frozen=True):
    addr: str = "localhost:6379"
    db: int = 0
    password: str = ""
    addr_given: bool = False  # REDIS_ADDR came from YAML, the environment or a flag, not the default

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{self.addr}/{self.db}"


class StreamSettings(msgspec.Struct, frozen=True):
    key: str = redis_keys.STREAM
    consumer_group: str = redis_keys.CONSUMER_GROUP
    consumer_name: str = ""
    max_len: int = 10000
    block_time: float = 5.0
    claim_time: float = 30.0
    batch_size: int = 100


class EventSettings(msgspec.Struct, frozen=True):
    bus: str = "in-memory"
    buffer_size: int = 1000
    max_request_body_bytes: int = 65536
    max_response_body_bytes: int = 262144
    file_event_log: str = ""
    dead_letter_file: str | None = None  # "" = off; None (unset) until load() puts it beside the event log


class DispatchSettings(msgspec.Struct, frozen=True):
    services: tuple[str, ...] = ()
    workers: int = 1
    api_key: str = ""
    endpoint: str = ""
    max_deliveries: int = 10
    batch_size: int = 100
    buffer: int = 1000
    flush_interval: float = 1.0


class CacheSettings(msgspec.Struct, frozen=True):
    enabled: bool = False
    backend: str = "in-memory"
    default_ttl: float = 300.0
    max_object_bytes: int = 1048576
    stream_responses: bool = False
    key_prefix: str = redis_keys.CACHE_PREFIX


class AuditSettings(msgspec.Struct, frozen=True):
    enabled: bool = True
    log_file: str = "./data/audit.log"
    store_in_db: bool = True


class LogSettings(msgspec.Struct, frozen=True):
    level: str = "info"
    format: str = "text"
    file: str = ""
    access: str = "-"  # ACCESS_LOG: "-" stderr, "off", or a path


class UsageSettings(msgspec.Struct, frozen=True):
    prices_path: str = ""  # PRICES_PATH: the operator's price file
    prices: dict[str, ModelPrice] = {}  # read from prices_path by load()
    retention_days: int = 400  # USAGE_RETENTION_DAYS: daily usage rows kept this long


class Settings(msgspec.Struct, frozen=True):
    """Every section, frozen. A new setting: a field with its default on its section Struct and one
    line in ``_VARS`` (env name → section, field, parser); ``load()`` needs no change."""

    server: ServerSettings = msgspec.field(default_factory=ServerSettings)
    upstream: UpstreamSettings = msgspec.field(default_factory=UpstreamSettings)
    store: StoreSettings = msgspec.field(default_factory=StoreSettings)
    auth: AuthSettings = msgspec.field(default_factory=AuthSettings)
    redis: RedisSettings = msgspec.field(default_factory=RedisSettings)
    streams: StreamSettings = msgspec.field(default_factory=StreamSettings)
    events: EventSettings = msgspec.field(default_factory=EventSettings)
    dispatch: DispatchSettings = msgspec.field(default_factory=DispatchSettings)
    cache: CacheSettings = msgspec.field(default_factory=CacheSettings)
    audit: AuditSettings = msgspec.field(default_factory=AuditSettings)
    log: LogSettings = msgspec.field(default_factory=LogSettings)
    usage: UsageSettings = msgspec.field(default_factory=UsageSettings)
    metrics_enabled: bool = True


# env var → (section, field, parser). The SPEC §3 names; flags use the same keys.
_VARS: dict[str, tuple[str, str, Any]] = {
    "LISTEN_ADDR": ("server", "listen_addr", listen_addr),
    "MANAGEMENT_TOKEN": ("server", "management_token", text),
    "SHUTDOWN_TIMEOUT": ("server", "shutdown_timeout", parse_duration),
    "CLIENT_HEADER_TIMEOUT": ("server", "client_header_timeout", positive_duration),
    "CLIENT_BODY_TIMEOUT": ("server", "client_body_timeout", positive_duration),
    "CLIENT_KEEPALIVE_TIMEOUT": ("server", "client_keepalive_timeout", positive_duration),
    "CLIENT_SEND_TIMEOUT": ("server", "client_send_timeout", positive_duration),
    "LLM_PROXY_URL": ("server", "manage_url", upstream_url),  # the same rule: a URL we can dial
    "UPSTREAM_BASE_URL": ("upstream", "base_url", upstream_url),
    "API_CONFIG_PATH": ("upstream", "api_config_path", text),
    "DATABASE_URL": ("store", "database_url", database_url),
    "ENCRYPTION_KEY": ("store", "encryption_key", encryption_key),
    "LLM_PROXY_API_KEY_CACHE_TTL": ("auth", "key_cache_ttl", parse_duration),
    "LLM_PROXY_API_KEY_CACHE_MAX": ("auth", "key_cache_max", integer),
    "RATE_LIMIT_BACKEND": ("auth", "rate_limit_backend", choice("auto", "local", "redis")),
    "REDIS_ADDR": ("redis", "addr", text),
    "REDIS_DB": ("redis", "db", integer),
    "REDIS_PASSWORD": ("redis", "password", text),
    "REDIS_STREAM_KEY": ("streams", "key", text),
    "REDIS_CONSUMER_GROUP": ("streams", "consumer_group", text),
    "REDIS_CONSUMER_NAME": ("streams", "consumer_name", text),
    "REDIS_STREAM_MAX_LEN": ("streams", "max_len", integer),
    "REDIS_STREAM_BLOCK_TIME": ("streams", "block_time", parse_duration),
    "REDIS_STREAM_CLAIM_TIME": ("streams", "claim_time", parse_duration),
    "REDIS_STREAM_BATCH_SIZE": ("streams", "batch_size", lambda v: integer(v, 1)),
    "LLM_PROXY_EVENT_BUS": ("events", "bus", choice("in-memory", "redis", "redis-streams")),
    "OBSERVABILITY_BUFFER_SIZE": ("events", "buffer_size", lambda v: integer(v, 1)),
    "OBSERVABILITY_MAX_REQUEST_BODY_BYTES": ("events", "max_request_body_bytes", integer),
    "OBSERVABILITY_MAX_RESPONSE_BODY_BYTES": ("events", "max_response_body_bytes", integer),
    "FILE_EVENT_LOG": ("events", "file_event_log", text),
    "DEAD_LETTER_FILE": ("events", "dead_letter_file", lambda v: "" if str(v).lower() == "off" else str(v)),
    "DISPATCHER_SERVICES": ("dispatch", "services", services),
    "DISPATCHER_WORKERS": ("dispatch", "workers", lambda v: integer(v, 1)),
    "DISPATCHER_MAX_DELIVERIES": ("dispatch", "max_deliveries", lambda v: integer(v, 1)),
    "DISPATCHER_BATCH_SIZE": ("dispatch", "batch_size", lambda v: integer(v, 1)),
    "DISPATCHER_BUFFER": ("dispatch", "buffer", lambda v: integer(v, 1)),
    "DISPATCHER_FLUSH_INTERVAL": ("dispatch", "flush_interval", parse_duration),
    "LLM_PROXY_API_KEY": ("dispatch", "api_key", text),
    "LLM_PROXY_ENDPOINT": ("dispatch", "endpoint", text),
    "HTTP_CACHE_ENABLED": ("cache", "enabled", boolean),
    "HTTP_CACHE_BACKEND": ("cache", "backend", choice("in-memory", "redis")),
    "HTTP_CACHE_DEFAULT_TTL": ("cache", "default_ttl", parse_duration),
    "HTTP_CACHE_MAX_OBJECT_BYTES": ("cache", "max_object_bytes", integer),
    "HTTP_CACHE_STREAM_RESPONSES": ("cache", "stream_responses", boolean),
    "REDIS_CACHE_KEY_PREFIX": ("cache", "key_prefix", text),
    "ENABLE_METRICS": ("", "metrics_enabled", boolean),
    "AUDIT_ENABLED": ("audit", "enabled", boolean),
    "AUDIT_LOG_FILE": ("audit", "log_file", text),
    "AUDIT_STORE_IN_DB": ("audit", "store_in_db", boolean),
    "LOG_LEVEL": ("log", "level", choice("debug", "info", "warning", "error", "critical")),
    "LOG_FORMAT": ("log", "format", choice("text", "json")),
    "LOG_FILE": ("log", "file", text),
    "PRICES_PATH": ("usage", "prices_path", text),
    "USAGE_RETENTION_DAYS": ("usage", "retention_days", lambda v: integer(v, 1)),
    "ACCESS_LOG": ("log", "access", lambda v: "off" if str(v).strip().lower() == "off" else str(v) or "-"),
}

ENV_VARS = tuple(_VARS)


_Values = dict[str, dict[str, Any]]  # section ("" = Settings itself) → field → parsed value


def _apply(values: _Values, name: str, raw: Any, source: str) -> None:
    section, field, parse = _VARS[name]
    try:
        value = parse(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} ({source}): {exc}") from None
    values.setdefault(section, {})[field] = value
    if name == "REDIS_ADDR":
        values["redis"]["addr_given"] = True


def _derive(values: _Values) -> None:
    """The values load() computes from others, before the frozen sections are built."""
    upstream, streams, events = (values.setdefault(k, {}) for k in ("upstream", "streams", "events"))
    dispatch = values.setdefault("dispatch", {})
    if upstream.get("api_config_path"):
        upstream["api"] = load_api_config(upstream["api_config_path"])
    usage = values.setdefault("usage", {})
    if usage.get("prices_path"):
        try:
            usage["prices"] = load_prices(usage["prices_path"])
        except ValueError as exc:
            raise ConfigError(f"PRICES_PATH: {exc}") from None
    if not streams.get("consumer_name"):
        streams["consumer_name"] = f"{socket.gethostname()}-{os.getpid()}"
    if not dispatch.get("services") and events.get("file_event_log"):
        dispatch["services"] = ("file",)
    if events.get("dead_letter_file") is None:  # DEAD_LETTER_FILE unset: beside the event log, else ./data
        directory = os.path.dirname(events.get("file_event_log") or "./data/") or "."
        events["dead_letter_file"] = os.path.join(directory, "dead-letters.jsonl")


def _build(values: _Values) -> Settings:
    """Construct each frozen section once from its collected values, then ``Settings`` from them."""
    sections = {
        f.name: f.default_factory(**values.get(f.name, {}))
        for f in msgspec.structs.fields(Settings)
        if f.default_factory is not msgspec.NODEFAULT
    }
    return Settings(**sections, **values.get("", {}))


def _read_yaml(path: str) -> Mapping[str, Any]:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (OSError, yaml.YAMLError) as exc:
        reason = str(exc).replace("\n", " ")
        raise ConfigError(f"cannot read config file {path}: {reason}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping of VARIABLE: value")
    return data


def load_api_config(path: str) -> ApiConfig:
    """Parse the API config YAML; keys unknown to ``ApiConfig`` are refused by name."""
    data = _read_yaml(path)
    # Accept the Go reference's layout too: apis.<default_api>.{...}
    if "apis" in data and isinstance(data["apis"], dict):
        name = data.get("default_api") or next(iter(data["apis"]), None)
        data = data["apis"].get(name) or {}
        data = {k: v for k, v in data.items() if k not in ("base_url", "connection")}
    timeouts = data.get("timeouts")
    if isinstance(timeouts, dict):
        data = dict(data)
        try:
            data["timeouts"] = {k: parse_duration(v) for k, v in timeouts.items() if k != "flush_interval"}
        except ValueError as exc:
            raise ConfigError(f"{path}: timeouts: {exc}") from None
    try:
        api = msgspec.convert(data, ApiConfig, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return msgspec.structs.replace(api, allowed_methods=tuple(m.upper() for m in api.allowed_methods))


def load(
    env: Mapping[str, str] | None = None,
    config_file: str | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build ``Settings``. ``overrides`` maps SPEC env-var names to flag values (None = not given)."""
    env = os.environ if env is None else env
    values: _Values = {}
    if config_file:
        for key, raw in _read_yaml(config_file).items():
            name = str(key).upper()
            if name not in _VARS:
                raise ConfigError(f"{config_file}: unknown setting {key!r}")
            _apply(values, name, raw, config_file)
    for name in _VARS:
        if name in env:
            _apply(values, name, env[name], "environment")
    for name, raw in (overrides or {}).items():
        if raw is not None:
            _apply(values, name, raw, "flag")
    _derive(values)
    return _build(values)


def require_management_token(settings: Settings) -> None:
    if not settings.server.management_token:
        raise ConfigError("MANAGEMENT_TOKEN is required: set it in the environment or the --config file")
    if len(settings.server.management_token) < 16:
        raise ConfigError("MANAGEMENT_TOKEN is too short: use at least 16 characters")
