"""make_bus / make_source pick and configure the implementation named by the settings (no I/O here)."""

from __future__ import annotations

import pytest

from llmproxy.config import RedisSettings, Settings
from llmproxy.config_sections import BusSettings
from llmproxy.events.factory import make_bus, make_source
from llmproxy.events.memory import InMemoryBus, MemorySource
from llmproxy.events.redis_streams import StreamSource
from llmproxy.redis_client import connect_redis
from llmproxy.redis_keys import dead_letter_key, group_name
from tests.settings import with_changes


def settings_for(bus: str) -> BusSettings:
    return BusSettings.of(with_changes(Settings(), events={"bus": bus}, streams={"consumer_name": "host-1"}))


async def test_the_in_memory_source_is_a_subscription_to_the_servers_bus() -> None:
    settings = settings_for("in-memory")
    bus = make_bus(settings)

    source = make_source(settings, "file", bus=bus)

    assert isinstance(bus, InMemoryBus) and isinstance(source, MemorySource)
    assert source.name == "file"


def test_the_in_memory_source_cannot_be_made_without_the_bus() -> None:
    with pytest.raises(ValueError, match="InMemoryBus"):
        make_source(settings_for("in-memory"), "file")


async def test_a_server_started_service_reads_its_own_group() -> None:
    source = make_source(settings_for("redis-streams"), "lunary")
    assert isinstance(source, StreamSource)

    assert (source.group, source.consumer) == ("llm-proxy-dispatchers-lunary", "host-1")
    await source.aclose()


async def test_group_and_consumer_can_be_given_explicitly() -> None:
    source = make_source(settings_for("redis-streams"), "file", group="shared", consumer="worker-2")
    assert isinstance(source, StreamSource)

    assert (source.group, source.consumer) == ("shared", "worker-2")
    await source.aclose()


def test_key_names() -> None:
    assert dead_letter_key("llm-proxy-events") == "llm-proxy-events:dead"
    assert group_name("llm-proxy-dispatchers", "file") == "llm-proxy-dispatchers-file"


def test_an_unknown_bus_is_refused() -> None:
    with pytest.raises(ValueError, match="kafka"):
        make_bus(settings_for("kafka"))


@pytest.mark.parametrize(
    ("addr", "host", "port"),
    [("localhost:6379", "localhost", 6379), ("10.1.2.3:6380", "10.1.2.3", 6380), ("[::1]:6381", "::1", 6381)],
)
async def test_the_redis_client_targets_redis_addr_with_db_and_password(
    addr: str, host: str, port: int
) -> None:
    client = connect_redis(RedisSettings(addr=addr, db=3, password="s3cret"), socket_timeout=7.0)

    kwargs = client.connection_pool.connection_kwargs
    assert (kwargs["host"], kwargs["port"], kwargs["db"], kwargs["password"]) == (host, port, 3, "s3cret")
    assert kwargs["socket_timeout"] == 7.0
    await client.aclose()
