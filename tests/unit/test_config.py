"""Settings: defaults, YAML < environment < flags, durations, and one clear error per bad value."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest

from llmproxy import config
from llmproxy.errors import ConfigError


def test_defaults_are_the_embedded_ones_of_the_spec() -> None:
    s = config.load({})
    assert s.server.listen_addr == "127.0.0.1:8080"
    assert s.store.database_url == "sqlite:///./data/llm-proxy.db"
    assert s.events.bus == "in-memory"
    assert (s.events.max_request_body_bytes, s.events.max_response_body_bytes) == (65536, 262144)
    assert (s.streams.key, s.streams.consumer_group, s.streams.max_len) == (
        "llm-proxy-events",
        "llm-proxy-dispatchers",
        10000,
    )
    assert (s.streams.block_time, s.streams.claim_time) == (5.0, 30.0)
    assert s.cache.enabled is False and s.cache.key_prefix == "llmproxy:cache:"
    assert s.dispatch.services == () and s.dispatch.max_deliveries == 10
    assert s.server.shutdown_timeout == 30.0
    assert (s.server.client_header_timeout, s.server.client_body_timeout) == (10.0, 30.0)
    assert s.server.client_keepalive_timeout == 75.0
    assert s.server.client_send_timeout == 60.0


@pytest.mark.parametrize(
    ("var", "value", "section", "field", "expected"),
    [
        ("OBSERVABILITY_BUFFER_SIZE", "7", "events", "buffer_size", 7),
        ("OBSERVABILITY_MAX_REQUEST_BODY_BYTES", "100", "events", "max_request_body_bytes", 100),
        ("OBSERVABILITY_MAX_RESPONSE_BODY_BYTES", "200", "events", "max_response_body_bytes", 200),
        ("REDIS_DB", "3", "redis", "db", 3),
        ("REDIS_PASSWORD", "pw", "redis", "password", "pw"),
        ("REDIS_CONSUMER_GROUP", "g", "streams", "consumer_group", "g"),
        ("REDIS_CONSUMER_NAME", "c1", "streams", "consumer_name", "c1"),
        ("REDIS_STREAM_BATCH_SIZE", "50", "streams", "batch_size", 50),
        ("HTTP_CACHE_DEFAULT_TTL", "2m", "cache", "default_ttl", 120.0),
        ("LLM_PROXY_API_KEY_CACHE_TTL", "10s", "auth", "key_cache_ttl", 10.0),
        ("LLM_PROXY_API_KEY_CACHE_MAX", "99", "auth", "key_cache_max", 99),
        ("AUDIT_ENABLED", "false", "audit", "enabled", False),
        ("AUDIT_STORE_IN_DB", "false", "audit", "store_in_db", False),
        ("LLM_PROXY_API_KEY", "k", "dispatch", "api_key", "k"),
        ("LLM_PROXY_ENDPOINT", "https://api.lunary.ai", "dispatch", "endpoint", "https://api.lunary.ai"),
        ("DISPATCHER_MAX_DELIVERIES", "4", "dispatch", "max_deliveries", 4),
        ("LOG_FORMAT", "json", "log", "format", "json"),
        ("LOG_LEVEL", "debug", "log", "level", "debug"),
        ("CLIENT_HEADER_TIMEOUT", "500ms", "server", "client_header_timeout", 0.5),
        ("CLIENT_BODY_TIMEOUT", "1m", "server", "client_body_timeout", 60.0),
        ("CLIENT_KEEPALIVE_TIMEOUT", "5", "server", "client_keepalive_timeout", 5.0),
        ("CLIENT_SEND_TIMEOUT", "2m", "server", "client_send_timeout", 120.0),
    ],
)
def test_each_spec_variable_reaches_its_setting(var, value, section, field, expected) -> None:
    assert getattr(getattr(config.load({var: value}), section), field) == expected


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("30s", 30.0), ("5m", 300.0), ("1h", 3600.0), ("12", 12.0), ("1.5s", 1.5)],
)
def test_durations_accept_the_spec_units(text: str, seconds: float) -> None:
    assert config.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5x", "-1s", "soon", "1 day"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        config.parse_duration(text)


def test_a_bad_value_names_the_variable_and_where_it_came_from() -> None:
    with pytest.raises(ConfigError, match=r"^REDIS_STREAM_CLAIM_TIME \(environment\): not a duration"):
        config.load({"REDIS_STREAM_CLAIM_TIME": "soon"})
    with pytest.raises(ConfigError, match=r"^LLM_PROXY_EVENT_BUS \(environment\): must be one of"):
        config.load({"LLM_PROXY_EVENT_BUS": "kafka"})
    with pytest.raises(ConfigError, match=r"^CLIENT_BODY_TIMEOUT \(environment\): must be more than 0"):
        config.load({"CLIENT_BODY_TIMEOUT": "0s"})
    with pytest.raises(ConfigError, match=r"^LISTEN_ADDR \(flag\): not HOST:PORT"):
        config.load({}, overrides={"LISTEN_ADDR": "localhost"})


@pytest.mark.parametrize(
    ("value", "kept"),
    [
        ("https://api.openai.com/", "https://api.openai.com"),
        ("http://127.0.0.1:65535/v1//", "http://127.0.0.1:65535/v1"),
        ("http://[::1]:1", "http://[::1]:1"),
        (" http://llm.internal ", "http://llm.internal"),
    ],
)
def test_an_upstream_url_with_a_host_and_a_port_in_range_is_kept(value: str, kept: str) -> None:
    assert config.load({"UPSTREAM_BASE_URL": value}).upstream.base_url == kept


@pytest.mark.parametrize(
    "value",
    ["http://127.0.0.1:99999", "http://[::1", "http://:80", "http://127.0.0.1:0", "http://a b", "ftp://x"],
)
def test_an_upstream_url_the_proxy_cannot_dial_is_refused_naming_it(value: str) -> None:
    with pytest.raises(ConfigError, match=r"^UPSTREAM_BASE_URL \(environment\): .*" + re.escape(repr(value))):
        config.load({"UPSTREAM_BASE_URL": value})


def test_yaml_is_overridden_by_the_environment_which_is_overridden_by_flags(tmp_path: Path) -> None:
    f = tmp_path / "llm-proxy.yaml"
    f.write_text("LISTEN_ADDR: 127.0.0.1:9001\nhttp_cache_enabled: true\nREDIS_STREAM_MAX_LEN: 5\n")
    s = config.load({"REDIS_STREAM_MAX_LEN": "7"}, config_file=str(f))
    assert (s.server.listen_addr, s.cache.enabled, s.streams.max_len) == ("127.0.0.1:9001", True, 7)
    s = config.load({}, config_file=str(f), overrides={"LISTEN_ADDR": "127.0.0.1:9002"})
    assert s.server.listen_addr == "127.0.0.1:9002"


def test_unknown_yaml_settings_and_unreadable_files_are_refused(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("LISTEN_ADRR: 127.0.0.1:1\n")
    with pytest.raises(ConfigError, match="unknown setting 'LISTEN_ADRR'"):
        config.load({}, config_file=str(f))
    with pytest.raises(ConfigError, match="config file not found"):
        config.load({}, config_file=str(tmp_path / "missing.yaml"))
    f.write_text("- a list\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        config.load({}, config_file=str(f))


def test_the_file_event_log_enables_the_file_dispatcher_unless_services_are_named() -> None:
    assert config.load({"FILE_EVENT_LOG": "/tmp/e.jsonl"}).dispatch.services == ("file",)
    s = config.load({"FILE_EVENT_LOG": "/tmp/e.jsonl", "DISPATCHER_SERVICES": "lunary, Helicone"})
    assert s.dispatch.services == ("lunary", "helicone")


def test_the_encryption_key_must_be_32_bytes_of_base64() -> None:
    key = base64.b64encode(bytes(range(32))).decode()
    assert config.load({"ENCRYPTION_KEY": key}).store.encryption_key == bytes(range(32))
    with pytest.raises(ConfigError, match="32 bytes"):
        config.load({"ENCRYPTION_KEY": base64.b64encode(b"short").decode()})
    with pytest.raises(ConfigError, match="not valid base64"):
        config.load({"ENCRYPTION_KEY": "***"})


def test_the_management_token_is_required_and_must_not_be_trivial() -> None:
    with pytest.raises(ConfigError, match="MANAGEMENT_TOKEN is required"):
        config.require_management_token(config.load({}))
    with pytest.raises(ConfigError, match="too short"):
        config.require_management_token(config.load({"MANAGEMENT_TOKEN": "short"}))
    config.require_management_token(config.load({"MANAGEMENT_TOKEN": "x" * 16}))


def test_the_api_config_yaml_is_read_and_unknown_keys_are_refused(tmp_path: Path) -> None:
    f = tmp_path / "api.yaml"
    f.write_text(
        "allowed_endpoints: [/v1/chat/completions]\nallowed_methods: [post]\n"
        "param_whitelist: {model: [gpt-4o-*]}\ntimeouts: {connect: 2s, request: 5m}\n"
    )
    s = config.load({"API_CONFIG_PATH": str(f)})
    api = s.upstream.api
    assert api.allowed_endpoints == ("/v1/chat/completions",) and api.allowed_methods == ("POST",)
    assert api.param_whitelist == {"model": ("gpt-4o-*",)}
    assert (api.timeouts.connect, api.timeouts.request) == (2.0, 300.0)
    f.write_text("allowed_endpoint: [/v1/x]\n")
    with pytest.raises(ConfigError, match="allowed_endpoint"):
        config.load({"API_CONFIG_PATH": str(f)})


def test_loaded_settings_and_their_sections_are_frozen() -> None:
    s = config.load({})
    with pytest.raises(AttributeError):
        s.upstream.base_url = "http://127.0.0.1:1"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        s.metrics_enabled = False  # type: ignore[misc]


def test_access_log_is_stderr_by_default_and_off_or_a_path_when_set() -> None:
    assert config.load({}).log.access == "-"
    assert config.load({"ACCESS_LOG": "OFF"}).log.access == "off"
    assert (
        config.load({"ACCESS_LOG": "/var/log/llm-proxy/access.log"}).log.access
        == "/var/log/llm-proxy/access.log"
    )
