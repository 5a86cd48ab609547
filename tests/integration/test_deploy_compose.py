"""deploy/docker-compose.yml and deploy/nginx/llm-proxy.conf, checked without Docker: the services, their
settings and health checks, and nginx's own verdict on the configuration (``nginx -t``)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from llmproxy import config

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
PROXIES = ("proxy1", "proxy2")
DOTENV = {"MANAGEMENT_TOKEN": "m" * 32, "ENCRYPTION_KEY": "A" * 43 + "=", "POSTGRES_PASSWORD": "pw"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def environment(service: dict[str, Any]) -> dict[str, str]:
    """The service's environment as the container sees it, with ``${VAR…}`` taken from DOTENV."""

    def substitute(value: str) -> str:
        def one(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(3)
            return DOTENV.get(name, default or "")

        return re.sub(r"\$\{(\w+)(:-([^}]*)|:\?[^}]*)?\}", one, str(value))

    return {name: substitute(value) for name, value in service["environment"].items()}


def test_the_stack_is_postgres_redis_two_proxies_and_nginx(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == {"postgres", "redis", "events-volume", *PROXIES, "nginx"}
    for name, service in compose["services"].items():
        if name != "events-volume":  # a one-shot chown
            assert service["healthcheck"]["test"], name
            assert service["restart"] == "unless-stopped", name


def test_every_proxy_shares_the_database_redis_and_event_log_and_starts_with_these_settings(
    compose: dict[str, Any],
) -> None:
    envs = [environment(compose["services"][name]) for name in PROXIES]
    assert envs[0] == envs[1]
    env = envs[0]
    assert env["DATABASE_URL"].startswith("postgresql://llm_proxy:pw@postgres:5432/")
    assert (env["REDIS_ADDR"], env["LLM_PROXY_EVENT_BUS"]) == ("redis:6379", "redis-streams")
    settings = config.load(env={**env, "LISTEN_ADDR": "0.0.0.0:8080"})  # every value parses
    assert settings.events.file_event_log == "/events/events.jsonl"
    for name in PROXIES:
        service = compose["services"][name]
        assert "events:/events" in service["volumes"]
        assert service["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert service["depends_on"]["redis"]["condition"] == "service_healthy"
        assert "/ready" in " ".join(service["healthcheck"]["test"])
        assert service["stop_grace_period"] == "40s"  # longer than the 30 s drain


def test_the_shared_services_have_the_settings_the_proxies_rely_on(compose: dict[str, Any]) -> None:
    services = compose["services"]
    redis_command = services["redis"]["command"]
    assert "--appendonly" in redis_command and "noeviction" in redis_command
    database_url = environment(services["proxy1"])["DATABASE_URL"]
    postgres = environment(services["postgres"])
    assert database_url.endswith(f"/{postgres['POSTGRES_DB']}")
    assert database_url.startswith(
        f"postgresql://{postgres['POSTGRES_USER']}:{postgres['POSTGRES_PASSWORD']}@"
    )


def test_nginx_balances_over_exactly_the_proxies_and_waits_for_them(compose: dict[str, Any]) -> None:
    nginx = compose["services"]["nginx"]
    assert "./nginx/llm-proxy.conf:/etc/nginx/conf.d/default.conf:ro" in nginx["volumes"]
    assert {
        name for name, dep in nginx["depends_on"].items() if dep["condition"] == "service_healthy"
    } == set(PROXIES)
    upstreams = re.findall(
        r"^\s*server (\w+):8080\b", (DEPLOY / "nginx" / "llm-proxy.conf").read_text(), re.M
    )
    assert upstreams == list(PROXIES)


def test_nginx_accepts_the_shipped_configuration(tmp_path: Path) -> None:
    """``nginx -t`` in the http context the nginx image gives it; the instance names, which only Docker's
    DNS knows, are pointed at the loopback address first."""
    shipped = (DEPLOY / "nginx" / "llm-proxy.conf").read_text()
    include = tmp_path / "llm-proxy.conf"
    include.write_text(re.sub(r"\bproxy\d:8080\b", "127.0.0.1:8080", shipped))
    main = tmp_path / "nginx.conf"
    main.write_text(
        f"error_log {tmp_path / 'error.log'};\npid {tmp_path / 'nginx.pid'};\nevents {{}}\n"
        f"http {{\n    access_log off;\n    include {include};\n}}\n"
    )
    checked = subprocess.run(
        [NGINX, "-t", "-q", "-p", str(tmp_path), "-c", str(main)], capture_output=True, text=True, timeout=30
    )
    assert checked.returncode == 0, checked.stderr
