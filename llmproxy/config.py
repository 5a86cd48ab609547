"""Settings: read once from defaults < YAML ``--config`` < environment < command-line flags.

This is the only module that reads ``os.environ``. Everything else receives a ``Settings``.
"""

from __future__ import annotations

import base64
import os
import re
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec
import yaml

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
    max_connections: int = 200
    max_connections_per_host: int = 0  # 0 = no per-host limit


class ServerSettings(msgspec.Struct):
    listen_addr: str = "127.0.0.1:8080"
    management_token: str = ""
    shutdown_timeout: float = 30.0
    client_header_timeout: float = 10.0  # a request head (line + headers) must be complete within this
    client_body_timeout: float = 30.0  # longest a request body may make no progress (then 408)
    client_keepalive_timeout: float = 75.0  # an idle keep-alive connection is closed after this


class UpstreamSettings(msgspec.Struct):
    base_url: str = "https://api.openai.com"
    api_config_path: str = ""
    api: ApiConfig = ApiConfig()


class StoreSettings(msgspec.Struct):
    database_url: str = "sqlite:///./data/llm-proxy.db"
    encryption_key: bytes | None = None  # 32 raw bytes


class AuthSettings(msgspec.Struct):
    key_cache_ttl: float = 30.0
    key_cache_max: int = 10000


class RedisSettings(msgspec.Struct):
    addr: str = "localhost:6379"
    db: int = 0
    password: str = ""

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{self.addr}/{self.db}"


class StreamSettings(msgspec.Struct):
    key: str = "llm-proxy-events"
    consumer_group: str = "llm-proxy-dispatchers"
    consumer_name: str = ""
    max_len: int = 10000
    block_time: float = 5.0
    claim_time: float = 30.0
    batch_size: int = 100


class EventSettings(msgspec.Struct):
    bus: str = "in-memory"
    buffer_size: int = 1000
    max_request_body_bytes: int = 65536
    max_response_body_bytes: int = 262144
    file_event_log: str = ""


class DispatchSettings(msgspec.Struct):
    services: tuple[str, ...] = ()
    workers: int = 1
    api_key: str = ""
    endpoint: str = ""
    max_deliveries: int = 10
    batch_size: int = 100
    buffer: int = 1000
    flush_interval: float = 1.0


class CacheSettings(msgspec.Struct):
    enabled: bool = False
    backend: str = "in-memory"
    default_ttl: float = 300.0
    max_object_bytes: int = 1048576
    stream_responses: bool = False
    key_prefix: str = "llmproxy:cache:"


class AuditSettings(msgspec.Struct):
    enabled: bool = True
    log_file: str = "./data/audit.log"
    store_in_db: bool = True


class LogSettings(msgspec.Struct):
    level: str = "info"
    format: str = "text"
    file: str = ""


class Settings(msgspec.Struct):
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
    metrics_enabled: bool = True


# --- value parsers ---------------------------------------------------------------------------

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(value: str | float | int) -> float:
    """``500ms``, ``30s``, ``5m``, ``1h`` or plain seconds → seconds."""
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"negative duration: {value!r}")
        return float(value)
    m = _DURATION.match(str(value))
    if not m:
        raise ValueError(f"not a duration (use 500ms, 30s, 5m, 1h or seconds): {value!r}")
    return float(m.group(1)) * _UNIT_SECONDS[m.group(2)]


def _positive_duration(value: str | float | int) -> float:
    if (seconds := parse_duration(value)) > 0:
        return seconds
    raise ValueError(f"must be more than 0: {value!r}")


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    s = str(value).strip().lower()
    if s in ("1", "true", "yes", "on"):
        return True
    if s in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not a boolean (use true/false): {value!r}")


def _int(value: Any, minimum: int = 0) -> int:
    if isinstance(value, bool):
        raise ValueError(f"not an integer: {value!r}")
    try:
        n = int(str(value).strip())
    except ValueError:
        raise ValueError(f"not an integer: {value!r}") from None
    if n < minimum:
        raise ValueError(f"must be >= {minimum}: {value!r}")
    return n


def _listen_addr(value: Any) -> str:
    s = str(value).strip()
    if s.startswith(":"):
        s = "0.0.0.0" + s
    host, sep, port = s.rpartition(":")
    if not sep or not port.isdigit() or not (0 <= int(port) <= 65535):
        raise ValueError(f"not HOST:PORT: {value!r}")
    return s


def _url(value: Any) -> str:
    s = str(value).strip().rstrip("/")
    if not re.match(r"^https?://[^/\s]+", s):
        raise ValueError(f"not an http(s) URL: {value!r}")
    return s


def _database_url(value: Any) -> str:
    s = str(value).strip()
    if not (s.startswith("sqlite://") or s.startswith(("postgresql://", "postgres://"))):
        raise ValueError(f"must be sqlite:///PATH or postgresql://...: {value!r}")
    return s


def _encryption_key(value: Any) -> bytes | None:
    s = str(value).strip()
    if not s:
        return None
    try:
        raw = base64.b64decode(s, validate=True)
    except ValueError:
        raise ValueError("ENCRYPTION_KEY is not valid base64") from None
    if len(raw) != 32:
        raise ValueError(f"ENCRYPTION_KEY must decode to 32 bytes, got {len(raw)}")
    return raw


def _choice(*choices: str) -> Any:
    def parse(value: Any) -> str:
        s = str(value).strip().lower()
        if s not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}: {value!r}")
        return s

    return parse


def _services(value: Any) -> tuple[str, ...]:
    items = value if isinstance(value, list | tuple) else str(value).split(",")
    return tuple(s.strip().lower() for s in items if str(s).strip())


def _str(value: Any) -> str:
    return str(value)


# env var → (section, field, parser). The SPEC §3 names; flags use the same keys.
_VARS: dict[str, tuple[str, str, Any]] = {
    "LISTEN_ADDR": ("server", "listen_addr", _listen_addr),
    "MANAGEMENT_TOKEN": ("server", "management_token", _str),
    "SHUTDOWN_TIMEOUT": ("server", "shutdown_timeout", parse_duration),
    "CLIENT_HEADER_TIMEOUT": ("server", "client_header_timeout", _positive_duration),
    "CLIENT_BODY_TIMEOUT": ("server", "client_body_timeout", _positive_duration),
    "CLIENT_KEEPALIVE_TIMEOUT": ("server", "client_keepalive_timeout", _positive_duration),
    "UPSTREAM_BASE_URL": ("upstream", "base_url", _url),
    "API_CONFIG_PATH": ("upstream", "api_config_path", _str),
    "DATABASE_URL": ("store", "database_url", _database_url),
    "ENCRYPTION_KEY": ("store", "encryption_key", _encryption_key),
    "LLM_PROXY_API_KEY_CACHE_TTL": ("auth", "key_cache_ttl", parse_duration),
    "LLM_PROXY_API_KEY_CACHE_MAX": ("auth", "key_cache_max", _int),
    "REDIS_ADDR": ("redis", "addr", _str),
    "REDIS_DB": ("redis", "db", _int),
    "REDIS_PASSWORD": ("redis", "password", _str),
    "REDIS_STREAM_KEY": ("streams", "key", _str),
    "REDIS_CONSUMER_GROUP": ("streams", "consumer_group", _str),
    "REDIS_CONSUMER_NAME": ("streams", "consumer_name", _str),
    "REDIS_STREAM_MAX_LEN": ("streams", "max_len", _int),
    "REDIS_STREAM_BLOCK_TIME": ("streams", "block_time", parse_duration),
    "REDIS_STREAM_CLAIM_TIME": ("streams", "claim_time", parse_duration),
    "REDIS_STREAM_BATCH_SIZE": ("streams", "batch_size", lambda v: _int(v, 1)),
    "LLM_PROXY_EVENT_BUS": ("events", "bus", _choice("in-memory", "redis", "redis-streams")),
    "OBSERVABILITY_BUFFER_SIZE": ("events", "buffer_size", lambda v: _int(v, 1)),
    "OBSERVABILITY_MAX_REQUEST_BODY_BYTES": ("events", "max_request_body_bytes", _int),
    "OBSERVABILITY_MAX_RESPONSE_BODY_BYTES": ("events", "max_response_body_bytes", _int),
    "FILE_EVENT_LOG": ("events", "file_event_log", _str),
    "DISPATCHER_SERVICES": ("dispatch", "services", _services),
    "DISPATCHER_WORKERS": ("dispatch", "workers", lambda v: _int(v, 1)),
    "DISPATCHER_MAX_DELIVERIES": ("dispatch", "max_deliveries", lambda v: _int(v, 1)),
    "DISPATCHER_BATCH_SIZE": ("dispatch", "batch_size", lambda v: _int(v, 1)),
    "DISPATCHER_BUFFER": ("dispatch", "buffer", lambda v: _int(v, 1)),
    "DISPATCHER_FLUSH_INTERVAL": ("dispatch", "flush_interval", parse_duration),
    "LLM_PROXY_API_KEY": ("dispatch", "api_key", _str),
    "LLM_PROXY_ENDPOINT": ("dispatch", "endpoint", _str),
    "HTTP_CACHE_ENABLED": ("cache", "enabled", _bool),
    "HTTP_CACHE_BACKEND": ("cache", "backend", _choice("in-memory", "redis")),
    "HTTP_CACHE_DEFAULT_TTL": ("cache", "default_ttl", parse_duration),
    "HTTP_CACHE_MAX_OBJECT_BYTES": ("cache", "max_object_bytes", _int),
    "HTTP_CACHE_STREAM_RESPONSES": ("cache", "stream_responses", _bool),
    "REDIS_CACHE_KEY_PREFIX": ("cache", "key_prefix", _str),
    "ENABLE_METRICS": ("", "metrics_enabled", _bool),
    "AUDIT_ENABLED": ("audit", "enabled", _bool),
    "AUDIT_LOG_FILE": ("audit", "log_file", _str),
    "AUDIT_STORE_IN_DB": ("audit", "store_in_db", _bool),
    "LOG_LEVEL": ("log", "level", _choice("debug", "info", "warning", "error", "critical")),
    "LOG_FORMAT": ("log", "format", _choice("text", "json")),
    "LOG_FILE": ("log", "file", _str),
}

ENV_VARS = tuple(_VARS)


def _apply(settings: Settings, name: str, raw: Any, source: str) -> None:
    section, field, parse = _VARS[name]
    try:
        value = parse(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} ({source}): {exc}") from None
    target: Any = getattr(settings, section) if section else settings
    setattr(target, field, value)


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
    settings = Settings()
    if config_file:
        for key, raw in _read_yaml(config_file).items():
            name = str(key).upper()
            if name not in _VARS:
                raise ConfigError(f"{config_file}: unknown setting {key!r}")
            _apply(settings, name, raw, config_file)
    for name in _VARS:
        if name in env:
            _apply(settings, name, env[name], "environment")
    for name, raw in (overrides or {}).items():
        if raw is not None:
            _apply(settings, name, raw, "flag")
    if settings.upstream.api_config_path:
        settings.upstream.api = load_api_config(settings.upstream.api_config_path)
    if not settings.streams.consumer_name:
        settings.streams.consumer_name = f"{socket.gethostname()}-{os.getpid()}"
    if not settings.dispatch.services and settings.events.file_event_log:
        settings.dispatch.services = ("file",)
    return settings


def require_management_token(settings: Settings) -> None:
    if not settings.server.management_token:
        raise ConfigError("MANAGEMENT_TOKEN is required: set it in the environment or the --config file")
    if len(settings.server.management_token) < 16:
        raise ConfigError("MANAGEMENT_TOKEN is too short: use at least 16 characters")
