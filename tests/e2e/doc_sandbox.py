"""Run shell steps as a reader of our docs would, on a private copy of this machine (see
doc_sandbox_init.py for what the copy holds), and hand back what happened.

Needs root (mount, network and pid namespaces, overlays, useradd). pip installs from a wheelhouse of
llmproxy's dependencies, built once per dependency set under .venv/, since the machine's own
indexes take a minute to resolve against.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.doc_blocks import Block
from tests.e2e.doc_sandbox_init import UPSTREAM_KEY

__all__ = ("ROOT", "UPSTREAM_KEY", "HostRun", "Step", "require_sandbox", "run_host")

ROOT = Path(__file__).resolve().parents[2]
SHIMS = Path(__file__).with_name("doc_sandbox_bin")


@dataclass
class Step:
    """A shell script the reader runs; the directive fields of doc_blocks.Block."""

    label: str
    script: str
    new_shell: bool = False
    background_until: str | None = None
    wait_for: str | None = None
    before: str | None = None
    timeout: float = 240.0

    @classmethod
    def of(cls, block: Block) -> Step:
        return cls(
            label=block.where(),
            script=block.text,
            new_shell=block.new_shell,
            background_until=block.background_until,
            wait_for=block.wait_for,
            before=block.before,
        )


@dataclass
class HostRun:
    """What happened: each step's outcome, what the fake upstream received, the files asked for."""

    steps: list[dict[str, Any]]
    upstream: list[dict[str, Any]]
    files: dict[str, dict[str, Any] | None]
    journals: dict[str, str]
    error: str | None = None
    report: str = field(default="", repr=False)

    def failed(self) -> list[dict[str, Any]]:
        return [s for s in self.steps if s["status"] != "ok"]


def require_sandbox() -> None:
    if os.geteuid() != 0:
        pytest.skip("the docs run in a root sandbox (mount/network/pid namespaces): run the suite as root")
    for tool in ("unshare", "setpriv", "ip", "redis-server", "redis-cli", "useradd", "dpkg-query"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is missing: scripts/test.sh installs what the doc test needs")


def _checkout_files() -> list[str]:
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    return sorted(name for name in listed.split("\0") if name and (ROOT / name).is_file())


def _wheelhouse() -> Path:
    """Wheels of llmproxy's dependencies and build requirements, for a pip without an index, chosen
    by the pip of the docs' `python3` (the system's: environment markers depend on its version)."""
    python3 = shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin") or "python3"
    version = subprocess.run([python3, "-VV"], capture_output=True, text=True, check=True).stdout
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    wanted = sorted([*pyproject["project"]["dependencies"], *pyproject["build-system"]["requires"]])
    key = hashlib.sha256("\n".join([version, *wanted]).encode()).hexdigest()[:16]
    house = ROOT / ".venv" / f"doc-test-wheelhouse-{key}"
    if house.is_dir():
        return house
    work = Path(tempfile.mkdtemp(prefix="doc-test-wheelhouse-", dir=ROOT / ".venv"))
    try:
        subprocess.run(
            [python3, "-m", "venv", str(work / "venv")], check=True, capture_output=True, timeout=300
        )
        download = [
            str(work / "venv/bin/pip"),
            "download",
            "-q",
            "--only-binary=:all:",
            "-d",
            str(work / "wheels"),
        ]
        result = subprocess.run([*download, *wanted], capture_output=True, text=True, timeout=600)
        if result.returncode != 0:
            pytest.fail(f"could not gather the wheels the docs' pip install needs:\n{result.stderr[-3000:]}")
        (work / "wheels").chmod(0o755)
        (work / "wheels").rename(house)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return house


def run_host(steps: list[Step], collect: list[str], tmp_path: Path, timeout: float = 540) -> HostRun:
    """Run the steps in a fresh sandbox; `collect` names files (absolute, or in the checkout) to
    stat and read before the sandbox goes."""
    scratch = Path(tempfile.mkdtemp(prefix="llmproxy-docs-"))  # under /tmp: reachable by every user
    scratch.chmod(0o755)
    plan = {
        "scratch": str(scratch),
        "source": str(ROOT),
        "files": _checkout_files(),
        "shims": str(SHIMS),
        "wheelhouse": str(_wheelhouse()),
        "steps": [asdict(step) for step in steps],
        "collect": collect,
    }
    plan_file, result_file = tmp_path / "plan.json", tmp_path / "result.json"
    plan_file.write_text(json.dumps(plan))
    unshare = ["unshare", "--mount", "--net", "--pid", "--fork", "--kill-child", "--mount-proc"]
    try:
        done = subprocess.run(
            [*unshare, sys.executable, "-m", "tests.e2e.doc_sandbox_init", str(plan_file), str(result_file)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)  # empty: its tmpfs was mounted in the sandbox only
    if not result_file.exists():
        pytest.fail(f"the sandbox wrote no result (exit {done.returncode}):\n{done.stdout}{done.stderr}")
    result = json.loads(result_file.read_text())
    run = HostRun(**result)
    run.report = _report(run)
    return run


def _report(run: HostRun) -> str:
    lines = []
    for step in run.steps:
        lines.append(f"--- {step['label']}: {step['status']} ({step.get('seconds', 0)} s)")
        if step["status"] != "ok":
            lines += [*step["failures"], step["output"]]
    if run.error:
        lines.append(run.error)
    for name, journal in run.journals.items():
        lines += [f"--- journal of {name}", journal]
    return "\n".join(lines)
