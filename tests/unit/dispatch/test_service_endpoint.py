"""Which endpoint each dispatcher service gets from LLM_PROXY_ENDPOINT and FILE_EVENT_LOG."""

from __future__ import annotations

import pytest

from llmproxy import config
from llmproxy.config_sections import WorkerSettings
from llmproxy.dispatch.worker import service_endpoint


@pytest.mark.parametrize(
    ("env", "service", "expected"),
    [
        ({"FILE_EVENT_LOG": "/var/log/e.jsonl"}, "file", "/var/log/e.jsonl"),
        (
            {"FILE_EVENT_LOG": "/var/log/e.jsonl", "LLM_PROXY_ENDPOINT": "/tmp/other.jsonl"},
            "file",
            "/tmp/other.jsonl",
        ),
        # a server running file,lunary: the URL is Lunary's, the file service keeps its log
        (
            {"FILE_EVENT_LOG": "/var/log/e.jsonl", "LLM_PROXY_ENDPOINT": "https://api.lunary.ai"},
            "file",
            "/var/log/e.jsonl",
        ),
        (
            {"FILE_EVENT_LOG": "/var/log/e.jsonl", "LLM_PROXY_ENDPOINT": "https://api.lunary.ai"},
            "lunary",
            "https://api.lunary.ai",
        ),
    ],
)
def test_the_file_service_takes_a_path_endpoint_and_never_a_backend_url(env, service, expected) -> None:
    assert service_endpoint(WorkerSettings.of(config.load(env)), service) == expected
