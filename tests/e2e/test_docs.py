"""The docs run as written (issue 15 §4): every shell block of README.md and docs/deploy-ec2.md is run,
in order, by a login user with sudo, on a scratch copy of this Debian machine (doc_sandbox.py) where
the reader's OPENAI_API_KEY and UPSTREAM_BASE_URL lead to the loopback fake upstream. A block that
cannot run anywhere is marked `<!-- doc-test: skip (why) -->` and listed in EXPECTED_SKIPS below, so
none is added silently; doc_blocks.py says what the other directives do.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e import doc_blocks, dockerfile
from tests.e2e.doc_sandbox import ROOT, UPSTREAM_KEY, HostRun, Step, require_sandbox, run_host

DOCS = ("README.md", "docs/deploy-ec2.md")
EXPECTED_SKIPS = {  # (document, first line of the block): why it cannot run on the test machine
    ("README.md", "scripts/test.sh"): "the test suite itself",
    ("docs/deploy-ec2.md", "sudo dnf install -y python3.11 redis6 logrotate"): "Amazon Linux",
    ("docs/deploy-ec2.md", "sudo -u postgres createuser llm_proxy --pwprompt"): "asks for a password",
    # Scaling out: tests/e2e/test_cluster.py runs the same topology (3 instances behind nginx, one
    # PostgreSQL, one Redis) and tests/integration/test_deploy_compose.py checks the compose file
    ("docs/deploy-ec2.md", "sudo -u postgres psql -c \"CREATE ROLE llm_proxy LOGIN PASSWORD 'change-me'\""): (
        "needs a PostgreSQL server"
    ),
    (
        "docs/deploy-ec2.md",
        "sudo install -m 0644 deploy/nginx/llm-proxy.conf /etc/nginx/conf.d/llm-proxy.conf",
    ): ("installs a file into /etc/nginx"),
    ("docs/deploy-ec2.md", "cd deploy && docker compose up -d --build"): "needs Docker",
    ("docs/deploy-ec2.md", "sudo systemctl enable --now llm-proxy-dispatcher@lunary"): "Lunary account",
    ("docs/deploy-ec2.md", "docker build -t llm-proxy ."): "needs docker",
}
EVENT_LOG = "/var/log/llm-proxy/events.jsonl"
ENV_FILE = "/etc/llm-proxy/llm-proxy.env"
CHAT = "POST /v1/chat/completions"


def all_blocks() -> list[doc_blocks.Block]:
    return [block for doc in DOCS for block in doc_blocks.parse(ROOT / doc, doc)]


def all_hosts() -> list[doc_blocks.Host]:
    return doc_blocks.hosts(all_blocks())


def test_every_code_block_names_its_language() -> None:
    untagged = [block.where() for block in all_blocks() if not block.language]
    assert untagged == [], "tag each block (sh for commands the test runs; ini, nginx, text, ... otherwise)"


def test_the_skipped_shell_blocks_are_exactly_the_listed_ones() -> None:
    skipped = {(b.doc, b.first_line): b.skip for b in all_blocks() if b.is_shell and b.skip}
    assert set(skipped) == set(EXPECTED_SKIPS), "a block marked skip is not run: list it in EXPECTED_SKIPS"
    for key, reason in EXPECTED_SKIPS.items():
        assert reason in str(skipped[key]), key


def test_the_quick_start_names_its_prerequisites() -> None:
    """Issue 15 §7: a reader offline or on another upstream got a 502 with no hint."""
    readme = (ROOT / "README.md").read_text()
    quick_start = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    assert "Python ≥ 3.11" in quick_start
    assert "UPSTREAM_BASE_URL" in quick_start


# --- what each walk-through must have done, beyond every block succeeding ----------------------------


def _forwarded_with_the_project_key(run: HostRun) -> None:
    chats = [r for r in run.upstream if f"{r['method']} {r['path']}" == CHAT]
    assert len(chats) == 1, run.upstream
    assert chats[0]["authorization"] == f"Bearer {UPSTREAM_KEY}"  # the token was swapped for the key


def _one_event(run: HostRun, path: str) -> None:
    log = run.files[path]
    assert log is not None, f"{path} was not written"
    events = [json.loads(line) for line in log["text"].splitlines()]
    assert [(e["method"], e["path"], e["status"]) for e in events] == [("POST", "/v1/chat/completions", 200)]


def _quick_start(run: HostRun) -> None:
    _forwarded_with_the_project_key(run)
    _one_event(run, "data/events.jsonl")
    assert any(CHAT in step["output"] for step in run.steps), "events tail printed the request"


def _in_short(run: HostRun) -> None:
    env = run.files[ENV_FILE]
    assert env is not None and (env["mode"], env["owner"], env["group"]) == (0o640, "root", "llm-proxy")
    settings = dict(re.findall(r"(?m)^([A-Z_]+)=(.*)$", env["text"]))
    assert len(settings["MANAGEMENT_TOKEN"]) >= 32 and len(settings["ENCRYPTION_KEY"]) == 44
    assert settings["LLM_PROXY_EVENT_BUS"] == "redis-streams"


def _deploy_ec2(run: HostRun) -> None:
    _in_short(run)
    _forwarded_with_the_project_key(run)
    _one_event(run, EVENT_LOG)
    log = run.files[EVENT_LOG]
    assert log is not None and log["group"] == "llm-proxy"
    assert log["mode"] == 0o640, "§7: the llm-proxy group reads the event log"


def _docker(run: HostRun) -> None:
    _forwarded_with_the_project_key(run)
    _one_event(run, f"{dockerfile.VOLUME_STAND_IN}/events.jsonl")
    page = run.steps[-1]["output"]
    assert '"configured": true' in page and "/v1/chat/completions" in page


class Walkthrough:
    """What a host of the docs needs besides its blocks: steps after them, files to read back, checks."""

    def __init__(
        self,
        check: Callable[[HostRun], None],
        collect: tuple[str, ...] = (),
        after: Callable[[], list[Step]] = list,
    ) -> None:
        self.check, self.collect, self.after = check, list(collect), after


WALKTHROUGHS = {
    ("README.md", "Quick start"): Walkthrough(_quick_start, ("data/events.jsonl",)),
    ("README.md", "Deploy on EC2"): Walkthrough(_in_short, (ENV_FILE,)),
    ("docs/deploy-ec2.md", "2. Packages"): Walkthrough(_deploy_ec2, (ENV_FILE, EVENT_LOG)),
    ("docs/deploy-ec2.md", "Docker"): Walkthrough(
        _docker,
        (f"{dockerfile.VOLUME_STAND_IN}/events.jsonl",),
        lambda: dockerfile.image_steps(ROOT / "Dockerfile", env_file=_docker_env_file()),
    ),
}


def _docker_env_file() -> str:
    """The --env-file of the Docker section's `docker run`, which its runnable blocks must create."""
    section = [b for b in all_blocks() if b.doc == "docs/deploy-ec2.md" and b.heading == "Docker"]
    named = {m for b in section for m in re.findall(r"--env-file\s+(\S+)", b.text)}
    assert len(named) == 1, f"the Docker section should run the image with one --env-file: {named}"
    return named.pop()


def test_every_walkthrough_is_known() -> None:
    assert {(h.doc, h.heading) for h in all_hosts()} == set(WALKTHROUGHS)


@pytest.mark.timeout(900)
@pytest.mark.parametrize("host", all_hosts(), ids=lambda h: f"{h.doc}: {h.heading}")
def test_the_docs_run_as_written(host: doc_blocks.Host, tmp_path: Path) -> None:
    require_sandbox()
    walkthrough = WALKTHROUGHS.get((host.doc, host.heading), Walkthrough(lambda run: None))
    steps = [Step.of(b) for b in host.blocks if not b.skip] + walkthrough.after()
    run = run_host(steps, walkthrough.collect, tmp_path)
    assert run.error is None, run.report
    assert [s["label"] for s in run.failed()] == [], run.report
    walkthrough.check(run)
