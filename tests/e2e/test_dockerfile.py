"""The Dockerfile and the container's env file, read as Docker reads them (docker cannot run on the
test machines; tests/e2e/test_docs.py runs the image's build and command in the doc sandbox)."""

from __future__ import annotations

import re

from llmproxy import config
from tests.e2e import dockerfile
from tests.e2e.doc_sandbox import ROOT

IMAGE = dockerfile.parse(ROOT / "Dockerfile")[-1]
ENV_EXAMPLE = ROOT / "deploy" / "docker.env.example"
SET_BY_THE_IMAGE = {"LISTEN_ADDR", "DATABASE_URL", "AUDIT_LOG_FILE", "FILE_EVENT_LOG"}


def _env_example() -> tuple[dict[str, str], set[str]]:
    """(set, documented): the KEY=value lines, and the names of the `#KEY=value` lines."""
    assigned: dict[str, str] = {}
    documented: set[str] = set()
    for line in ENV_EXAMPLE.read_text().splitlines():
        if m := re.fullmatch(r"(#?)([A-Z][A-Z0-9_]+)=(.*)", line):
            if m.group(1):
                documented.add(m.group(2))
            else:
                assigned[m.group(2)] = m.group(3)
        else:  # docker --env-file: a bare KEY would pass the host's value of it into the container
            assert line == "" or line.startswith("#"), line
    return assigned, documented


def test_the_image_runs_as_a_non_root_user_with_a_fixed_uid() -> None:
    assert IMAGE.user == "llm-proxy"
    assert any("useradd --system --uid 10001" in run for run in IMAGE.runs())


def test_the_image_keeps_its_database_audit_log_and_event_log_in_the_data_volume() -> None:
    assert IMAGE.volumes == ["/data"] and IMAGE.workdir == "/data"
    assert IMAGE.env["DATABASE_URL"] == "sqlite:////data/llm-proxy.db"
    assert IMAGE.env["AUDIT_LOG_FILE"] == "/data/audit.log"
    assert IMAGE.env["FILE_EVENT_LOG"] == "/data/events.jsonl"  # the Events page has events
    settings = config.load(env={k: v for k, v in IMAGE.env.items() if k in config._VARS})
    assert settings.events.file_event_log == "/data/events.jsonl"


def test_the_image_listens_on_8080_and_checks_its_health_there() -> None:
    assert IMAGE.env["LISTEN_ADDR"] == "0.0.0.0:8080"
    assert ("EXPOSE", "8080") in IMAGE.instructions
    assert " CMD " in IMAGE.healthcheck and "http://127.0.0.1:8080/health" in IMAGE.healthcheck


def test_the_image_runs_llm_proxy_server_as_pid_1() -> None:
    assert IMAGE.entrypoint == ["llm-proxy"]  # exec form: the server itself gets docker stop's SIGTERM
    assert IMAGE.cmd == ["server", "--listen", "0.0.0.0:8080"]
    assert IMAGE.env["PATH"].startswith("/opt/llm-proxy/venv/bin:")


def test_the_container_env_file_names_only_real_settings_and_none_the_image_sets() -> None:
    assigned, documented = _env_example()
    assert set(assigned) | documented <= set(config._VARS)
    assert set(assigned) & SET_BY_THE_IMAGE == set()  # a systemd path here breaks the container
    assert assigned == {"MANAGEMENT_TOKEN": ""}  # to fill in; the server refuses to start without it


def test_the_container_env_file_is_accepted_over_the_image_settings() -> None:
    assigned, _ = _env_example()
    env = {k: v for k, v in IMAGE.env.items() if k in config._VARS}
    settings = config.load(env={**env, **assigned, "MANAGEMENT_TOKEN": "a-long-enough-management-token"})
    assert settings.store.database_url == "sqlite:////data/llm-proxy.db"
    assert settings.audit.log_file == "/data/audit.log"
