"""`llm-proxy events dead list|show|replay|purge`: the events a backend refused for good.

With Redis Streams they are in ``<stream>:dead``, and ``replay`` puts each one back on the stream for its
own service (the other services skip it). With the in-memory bus they are in DEAD_LETTER_FILE and no
server bus can be reached from here: ``replay`` sends them to their service's backend from this process,
through the same Dispatcher (so run it with the server's settings: FILE_EVENT_LOG, LLM_PROXY_ENDPOINT,
LLM_PROXY_API_KEY). Either way a replayed letter leaves the dead letters; refused again, it comes back as a
new one. Exit 0 done, 1 Redis unreachable / an id not found / an event not delivered, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections import Counter, deque
from typing import TYPE_CHECKING

import msgspec
from redis.exceptions import RedisError

from llmproxy.config_sections import WorkerSettings
from llmproxy.dispatch.dispatcher import Dispatcher
from llmproxy.dispatch.registry import make_backend
from llmproxy.dispatch.worker import service_endpoint
from llmproxy.errors import ConfigError
from llmproxy.events.bus import Delivery
from llmproxy.events.dead_letters import DeadLetter, DeadLetterFile, DeadLetterStream, new_letter
from llmproxy.loop import run_loop
from llmproxy.redis_client import connect_redis

if TYPE_CHECKING:
    from llmproxy.events.dead_letters import DeadLetters

__all__ = ("add_arguments", "run")

REPLAY_ATTEMPTS = 3  # sends of a batch before a transient failure leaves it in the dead letters
REPLAY_TIMEOUT_S = 120.0
_WIDTH = 100


def add_arguments(parser: argparse.ArgumentParser, parser_class: type[argparse.ArgumentParser]) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="FILE", help="YAML file of settings (as for the server)")
    common.add_argument("--file", metavar="PATH", help="the dead-letter file (default: DEAD_LETTER_FILE)")
    sub = parser.add_subparsers(dest="dead_command", parser_class=parser_class, required=True)
    p = sub.add_parser("list", parents=[common], help="one line per dead letter, oldest first")
    p.add_argument("--service", help="only this service's")
    p.add_argument("--limit", type=int, metavar="N", help="only the newest N")
    p.add_argument("--json", action="store_true", help="one JSON document per line")
    p = sub.add_parser("show", parents=[common], help="dead letters in full, event included (JSON)")
    p.add_argument("ids", nargs="+", metavar="ID")
    for name, what in (("replay", "send again to their service, once"), ("purge", "delete for good")):
        p = sub.add_parser(name, parents=[common], help=f"{what}: IDs, --service S or --all")
        p.add_argument("ids", nargs="*", metavar="ID")
        p.add_argument("--service", help="every dead letter of this service")
        p.add_argument("--all", action="store_true", help="every dead letter")


class _Failed(Exception):
    """A one-line reason to exit 1."""


def run(args: argparse.Namespace, settings: WorkerSettings) -> int:
    try:
        return run_loop(_run(args, settings))
    except _Failed as exc:
        sys.stderr.write(f"llm-proxy: {exc}\n")
        return 1


async def _run(args: argparse.Namespace, settings: WorkerSettings) -> int:
    command = args.dead_command
    if command in ("replay", "purge") and not (args.ids or args.service or args.all):
        raise ConfigError(f"events dead {command}: name the dead letters: IDs, --service S or --all")
    bus = settings.bus.kind
    if bus == "redis":
        raise ConfigError("events dead reads DEAD_LETTER_FILE (in-memory bus) or <stream>:dead (redis-streams); "
                          "the redis list bus keeps them in the list <stream>:list:dead")  # fmt: skip
    if bus == "in-memory":
        if not settings.bus.dead_letter_file:
            raise ConfigError("DEAD_LETTER_FILE is off: there are no dead letters to read")
        return await _on(DeadLetterFile(settings.bus.dead_letter_file), args, settings)
    redis = connect_redis(settings.bus.redis, socket_timeout=5.0)
    try:
        stream = DeadLetterStream(redis, settings.bus.streams.key, max_len=settings.bus.streams.max_len)
        return await _on(stream, args, settings)
    except (RedisError, OSError) as exc:
        raise _Failed(f"Redis at {settings.bus.redis.addr} unreachable: {exc}") from None
    finally:
        await redis.aclose()


async def _on(store: DeadLetters, args: argparse.Namespace, settings: WorkerSettings) -> int:
    command = args.dead_command
    if command == "list":
        letters = await store.entries(args.limit)
        letters = [letter for letter in letters if not args.service or letter.service == args.service]
        _print_list(letters, store.where, as_json=args.json)
        return 0
    letters = _chosen(await store.entries(), args)
    if command == "show":
        for letter in letters:
            print(msgspec.json.format(msgspec.json.encode(letter), indent=2).decode())
        return 0
    if command == "purge":
        removed = await store.remove([letter.id for letter in letters])
        print(f"purged {removed} dead letters from {store.where}")
        return 0
    if isinstance(store, DeadLetterStream):
        replayed = await store.replay(letters)
        print(f"replayed {replayed} dead letters to {_per_service(letters)} on {settings.bus.streams.key}")
        return 0
    assert isinstance(store, DeadLetterFile)
    return await _replay_from_file(store, letters, settings)


def _chosen(letters: list[DeadLetter], args: argparse.Namespace) -> list[DeadLetter]:
    """The letters named by IDs (each must exist), --service, or --all."""
    if getattr(args, "all", False):
        return letters
    chosen = [letter for letter in letters if getattr(args, "service", None) in (None, letter.service)]
    if args.ids:
        by_id = {letter.id: letter for letter in chosen}
        missing = [i for i in args.ids if i not in by_id]
        if missing:
            raise _Failed(f"no dead letter with id {', '.join(missing)}")
        chosen = [by_id[i] for i in dict.fromkeys(args.ids)]
    return chosen


def _per_service(letters: list[DeadLetter]) -> str:
    counts = Counter(letter.service for letter in letters)
    return ", ".join(f"{service} ({n})" for service, n in sorted(counts.items())) or "no service"


class _Summary(msgspec.Struct):
    method: str = ""
    path: str = ""
    status: int = 0


_summary = msgspec.json.Decoder(_Summary)


def _print_list(letters: list[DeadLetter], where: str, *, as_json: bool) -> None:
    if as_json:
        for letter in letters:
            print(msgspec.json.encode(letter).decode())
        return
    if not letters:
        print(f"no dead letters in {where}")
        return
    for letter in letters:
        try:
            s = _summary.decode(letter.event)
            what = f"{s.method} {s.path} {s.status}"
        except msgspec.DecodeError:
            what = "(not an event)"
        line = f"{letter.id}  {letter.time[:19]}Z  {letter.service:<8}  {what}  {letter.error}"
        print(line if len(line) <= _WIDTH else line[: _WIDTH - 1] + "…")


# --- replay from the file: this process delivers, through the server's own Dispatcher ---------------


class _LetterSource:
    """The chosen letters as an EventSource: handed out once; what the backend refuses again becomes a new
    dead letter in the file."""

    redelivers = False

    def __init__(self, letters: list[DeadLetter], service: str, file: DeadLetterFile) -> None:
        self._waiting = deque(Delivery(letter.id, None, bytes(letter.event), 1) for letter in letters)
        self._service = service
        self._file = file
        self.acked: set[str] = set()
        self.refused: set[str] = set()

    async def start(self) -> None:
        return None

    async def read(self, max_count: int, block_s: float) -> list[Delivery]:
        if not self._waiting:
            await asyncio.sleep(min(block_s, 0.05))
            return []
        return [self._waiting.popleft() for _ in range(min(max_count, len(self._waiting)))]

    async def ack(self, entry_ids: list[str]) -> None:
        self.acked.update(entry_ids)

    async def dead_letter(self, deliveries: list[Delivery], error: str) -> None:
        await self._file.add(
            [new_letter(d.raw, self._service, error, original_id=d.entry_id) for d in deliveries]
        )
        self.refused.update(d.entry_id for d in deliveries)

    async def lag(self) -> dict[str, int]:
        return {"length": len(self._waiting), "pending": 0}

    async def aclose(self) -> None:
        return None


async def _replay_from_file(file: DeadLetterFile, letters: list[DeadLetter], settings: WorkerSettings) -> int:
    by_service: dict[str, list[DeadLetter]] = {}
    for letter in letters:
        by_service.setdefault(letter.service, []).append(letter)
    undelivered = 0
    for service, mine in sorted(by_service.items()):
        source, error = await _deliver(service, mine, file, settings)
        await file.remove(source.acked | source.refused)  # the replayed letters leave; a refusal is a new one
        kept = len(mine) - len(source.acked) - len(source.refused)
        undelivered += len(mine) - len(source.acked)
        report = f"{service}: {len(source.acked)} delivered"
        if len(source.acked) < len(mine):
            report += (
                f", {len(source.refused)} refused again (new dead letters), {kept} not sent (kept): {error}"
            )
        print(report)
    return 1 if undelivered else 0


async def _deliver(
    service: str, letters: list[DeadLetter], file: DeadLetterFile, settings: WorkerSettings
) -> tuple[_LetterSource, str | None]:
    """Run a Dispatcher over ``letters`` until each is delivered, refused or given up (bounded)."""
    try:
        backend = make_backend(service, service_endpoint(settings, service), settings.dispatch.api_key)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    source = _LetterSource(letters, service, file)
    dispatcher = Dispatcher(
        source, backend, batch_size=settings.dispatch.batch_size, flush_interval=0.05,
        max_attempts=REPLAY_ATTEMPTS,
    )  # fmt: skip
    stop = asyncio.Event()
    task = asyncio.get_running_loop().create_task(dispatcher.run(stop), name=f"replay-{service}")
    deadline = time.monotonic() + REPLAY_TIMEOUT_S
    try:
        while time.monotonic() < deadline and not task.done():
            if len(source.acked) + len(source.refused) + dispatcher.stats.failed >= len(letters):
                break
            await asyncio.sleep(0.02)
    finally:
        stop.set()
        await task
        await backend.aclose()
    return source, dispatcher.stats.last_error
