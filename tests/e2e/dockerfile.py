"""Our Dockerfile read as Docker reads it, and what a container of its image does, replayed as shell
steps in the documentation sandbox (docker does not run on the test machines).

The replay: the build stage's COPY and RUN in a scratch directory (the RUN as written, `python` being
`python3` here), the final stage's RUN, then ENTRYPOINT + CMD started with the image's ENV, the
`--env-file` and the WORKDIR, as the image's USER. The one liberty: the `/data` volume is `/srv/data`,
since the sandbox can add directories under its overlays only.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from tests.e2e.doc_sandbox import Step

__all__ = ("IMAGE_PORT_URL", "VOLUME_STAND_IN", "Stage", "image_steps", "parse")

BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"  # python:3.11-slim's
VOLUME_STAND_IN = "/srv/data"
BUILD_DIR = "/srv/image-build"
IMAGE_PORT_URL = "http://127.0.0.1:8080"


@dataclass
class Stage:
    """One FROM ... stage: its instructions in order, and the settings Docker keeps the last of."""

    base: str
    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    workdir: str = "/"
    user: str = "root"
    volumes: list[str] = field(default_factory=list)
    healthcheck: str = ""
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)

    def runs(self) -> list[str]:
        return [args for op, args in self.instructions if op == "RUN"]

    def copies(self) -> list[list[str]]:
        return [shlex.split(args) for op, args in self.instructions if op == "COPY"]


def _logical_lines(text: str) -> list[str]:
    lines, current = [], ""
    for raw in text.splitlines():
        if raw.lstrip().startswith("#") and not current.strip():
            continue
        if raw.lstrip().startswith("#"):
            continue  # a comment inside a continued instruction
        if raw.rstrip().endswith("\\"):
            current += raw.rstrip()[:-1] + " "
            continue
        current += raw
        if current.strip():
            lines.append(current.strip())
        current = ""
    return lines


def _exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list), f"not the exec form: {args}"
    return [str(v) for v in value]


def parse(path: Path) -> list[Stage]:
    stages: list[Stage] = []
    for line in _logical_lines(path.read_text()):
        op, _, args = line.partition(" ")
        op, args = op.upper(), args.strip()
        if op == "FROM":
            base, _, name = args.partition(" AS ")
            stages.append(Stage(base.strip(), name.strip()))
            continue
        stage = stages[-1]
        stage.instructions.append((op, args))
        if op == "ENV":
            for item in shlex.split(args):
                key, _, value = item.partition("=")
                stage.env[key] = value
        elif op == "WORKDIR":
            stage.workdir = args
        elif op == "USER":
            stage.user = args
        elif op == "VOLUME":
            stage.volumes += _exec_form(args) if args.startswith("[") else args.split()
        elif op == "HEALTHCHECK":
            stage.healthcheck = args
        elif op == "ENTRYPOINT":
            stage.entrypoint = _exec_form(args)
        elif op == "CMD":
            stage.cmd = _exec_form(args)
    return stages


def _in_sandbox(text: str) -> str:
    return re.sub(r"(?<![\w.-])/data\b", VOLUME_STAND_IN, text)  # sqlite:////data too


def image_env(stage: Stage) -> dict[str, str]:
    """The final stage's ENV as a container sees it: $PATH expanded, /data where the sandbox has it."""
    return {k: _in_sandbox(v.replace("$PATH", BASE_PATH)) for k, v in stage.env.items()}


def image_steps(dockerfile: Path, env_file: str) -> list[Step]:
    """`docker build`, then `docker run --env-file ENV_FILE -e UPSTREAM_BASE_URL` and what the docs
    do with the container, as steps of the reader's shell (whose `sudo` is root)."""
    build, final = (stages := parse(dockerfile))[0], stages[-1]
    copy = [f"sudo mkdir -p {BUILD_DIR}"]
    for args in build.copies():
        *sources, dest = args
        target = dest if dest.startswith("/") else f"{BUILD_DIR}/{dest}"
        copy.append(f"sudo cp -r {' '.join(sources)} {target}")
    python3 = [re.sub(r"(^|&& )python ", r"\1python3 ", run) for run in build.runs()]
    built = [f"(cd {BUILD_DIR} && sudo sh -c {shlex.quote(run)})" for run in python3]
    final_runs = [f"sudo sh -c {shlex.quote(_in_sandbox(run))}" for run in final.runs()]
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in image_env(final).items())
    container = (
        # docker run/exec: the image's ENV, then the env file's lines (they win), as the image's USER
        f"mapfile -t env_file < <(grep -Ev '^[[:space:]]*(#|$)' {shlex.quote(env_file)})\n"
        f'in_container() {{ (cd {_in_sandbox(final.workdir)} && sudo env -i {env} "${{env_file[@]}}" '
        f'UPSTREAM_BASE_URL="$UPSTREAM_BASE_URL" setpriv --reuid={final.user} --regid={final.user} '
        f'--init-groups -- "$@"); }}\n'
    )
    command = " ".join(shlex.quote(a) for a in [*final.entrypoint, *final.cmd])
    health = final.healthcheck.split(" CMD ", 1)[1]
    chat = '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}'
    return [
        Step("docker build (emulated)", "\n".join([*copy, *built, *final_runs]) + "\n"),
        Step(
            "docker run (emulated)",
            container + f"in_container {command}\n",
            background_until=f"{IMAGE_PORT_URL}/health",
        ),
        Step(
            "the container answers",
            container
            + f"in_container sh -c {shlex.quote(health)}\n"
            + "PROJECT_ID=$(in_container llm-proxy manage project create --name docker "
            + '--api-key "$OPENAI_API_KEY" --json | python3 -c \'import json, sys; print(json.load(sys.stdin)["id"])\')\n'
            + 'TOKEN=$(in_container llm-proxy manage token generate --project-id "$PROJECT_ID" --json '
            + "| python3 -c 'import json, sys; print(json.load(sys.stdin)[\"token\"])')\n"
            + f'curl -sS --fail-with-body {IMAGE_PORT_URL}/v1/chat/completions -H "Authorization: Bearer $TOKEN" '
            + f"-H 'Content-Type: application/json' -d {shlex.quote(chat)}\n",
        ),
        Step(
            "its event log and Events page",
            container
            + f"in_container llm-proxy events tail --file {_in_sandbox(final.env.get('FILE_EVENT_LOG', '/data/events.jsonl'))}\n"
            + f"python3 {Path(__file__).with_name('admin_events.py').relative_to(Path(__file__).parents[2])} "
            + f"{IMAGE_PORT_URL} {shlex.quote(env_file)}\n",
            wait_for=_in_sandbox(final.env.get("FILE_EVENT_LOG", "/data/events.jsonl")),
        ),
    ]
