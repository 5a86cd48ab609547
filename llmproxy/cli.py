"""llm-proxy: argparse only. One subcommand → one entry function elsewhere; exit codes per SPEC §2."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from llmproxy import __version__, config
from llmproxy.errors import ConfigError, StartupError

__all__ = ("main",)

EXIT_CONFIG = 2


class _Parser(argparse.ArgumentParser):
    """Argument errors: one clear line on stderr, exit 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"llm-proxy: error: {message}\n")
        raise SystemExit(EXIT_CONFIG)


def _settings(args: argparse.Namespace, **overrides: Any) -> config.Settings:
    return config.load(config_file=getattr(args, "config", None), overrides=overrides)


def _add_detach(p: argparse.ArgumentParser) -> None:
    p.add_argument("--detach", action="store_true", help="run in the background as a daemon")
    p.add_argument("--pid-file", help="write the daemon's pid here (with --detach)")
    p.add_argument("--log-file", help="daemon stdout/stderr go here (with --detach)")


def _maybe_detached(args: argparse.Namespace, main: Callable[[Callable[[], None] | None], int]) -> int:
    """Run ``main`` here, or as a daemon with --detach (which returns once ``main`` says it is ready)."""
    if not args.detach:
        return main(None)
    from llmproxy import daemon

    def run_daemonized(ready: Callable[[], None]) -> None:
        code = main(ready)  # a StartupError raised here is the reason the launcher prints
        if code:
            raise SystemExit(code)

    return daemon.detach_and_run(run_daemonized, pid_file=args.pid_file, log_file=args.log_file)


def _cmd_server(args: argparse.Namespace) -> int:
    from llmproxy.server.run import run_server_command

    settings = _settings(args, LISTEN_ADDR=args.listen, FILE_EVENT_LOG=args.file_event_log)
    config.require_management_token(settings)
    return _maybe_detached(args, lambda ready: run_server_command(settings, ready))


def _cmd_migrate(args: argparse.Namespace) -> int:
    from llmproxy.server.run import run_migrate_command

    return run_migrate_command(_settings(args))


def _cmd_dispatcher(args: argparse.Namespace) -> int:
    from llmproxy.config_sections import WorkerSettings
    from llmproxy.dispatch.worker import run_dispatcher_command

    settings = _settings(
        args,
        LLM_PROXY_ENDPOINT=args.endpoint,
        LLM_PROXY_API_KEY=args.api_key,
        DISPATCHER_BUFFER=args.buffer,
        DISPATCHER_BATCH_SIZE=args.batch_size,
        DISPATCHER_WORKERS=args.workers,
    )
    worker = WorkerSettings.of(settings)
    return _maybe_detached(args, lambda ready: run_dispatcher_command(worker, args.service, ready))


def _manage_server(args: argparse.Namespace) -> config.ServerSettings:
    """What ``llm-proxy manage`` reads of the settings (its URL and token), when a flag leaves one out."""
    return _settings(args).server


def _cmd_manage(args: argparse.Namespace) -> int:
    from llmproxy.manage import client

    return client.run(args)


def _cmd_events_tail(args: argparse.Namespace) -> int:
    from llmproxy import tail

    if not args.file:
        args.file = _settings(args).events.file_event_log
    return tail.run(args)


def _cmd_events_dead(args: argparse.Namespace) -> int:
    from llmproxy import events_dead
    from llmproxy.config_sections import WorkerSettings

    return events_dead.run(args, WorkerSettings.of(_settings(args, DEAD_LETTER_FILE=args.file)))


def _cmd_benchmark(args: argparse.Namespace) -> int:
    from llmproxy import bench

    return bench.run(args)


def _cmd_stop(args: argparse.Namespace) -> int:
    from llmproxy import daemon

    return daemon.stop(args.pid_file, timeout=args.timeout)


def _cmd_status(args: argparse.Namespace) -> int:
    from llmproxy import daemon

    return daemon.status(args.pid_file)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="llm-proxy", description="A transparent, secure, fast proxy for OpenAI-compatible APIs"
    )
    parser.add_argument("--version", action="version", version=f"llm-proxy {__version__}")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)

    p = sub.add_parser("server", help="run the proxy, management API and dispatchers (default)")
    p.add_argument("--listen", metavar="ADDR", help="bind address, e.g. 127.0.0.1:8080 (LISTEN_ADDR)")
    p.add_argument("--config", metavar="FILE", help="YAML file of SPEC §3 settings")
    p.add_argument("--file-event-log", metavar="PATH", help="JSONL event log (FILE_EVENT_LOG)")
    _add_detach(p)
    p.set_defaults(func=_cmd_server)

    p = sub.add_parser("dispatcher", help="run one dispatcher service standalone")
    p.add_argument("--service", default="file", help="file | lunary | helicone (default: file)")
    p.add_argument("--endpoint", help="backend URL, or the JSONL path for the file service")
    p.add_argument("--api-key", help="backend API key (LLM_PROXY_API_KEY)")
    p.add_argument("--buffer", type=int, help="in-flight events (default 1000)")
    p.add_argument("--batch-size", type=int, help="events per delivery (default 100)")
    p.add_argument("--workers", type=int, help="worker processes (default 1)")
    p.add_argument("--config", metavar="FILE")
    _add_detach(p)
    p.set_defaults(func=_cmd_dispatcher)

    p = sub.add_parser("migrate", help="apply database migrations")
    p.add_argument("--config", metavar="FILE")
    p.set_defaults(func=_cmd_migrate)

    p = sub.add_parser("manage", help="manage projects and tokens over the management API")
    _add_manage_arguments(p)
    p.set_defaults(func=_cmd_manage, load_server=_manage_server)

    p = sub.add_parser("events", help="read the JSONL event log")
    events = p.add_subparsers(dest="events_command", parser_class=_Parser, required=True)
    t = events.add_parser("tail", help="print events, human-readable by default")
    t.add_argument("--config", metavar="FILE")
    _add_tail_arguments(t)
    t.set_defaults(func=_cmd_events_tail)
    d = events.add_parser("dead", help="list, show, replay or purge the events a backend refused")
    _add_dead_arguments(d)
    d.set_defaults(func=_cmd_events_dead)

    p = sub.add_parser("benchmark", help="load-test a running proxy")
    _add_bench_arguments(p)
    p.set_defaults(func=_cmd_benchmark)

    for name, func, help_text in (
        ("stop", _cmd_stop, "stop a detached process"),
        ("status", _cmd_status, "is it running?"),
    ):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--pid-file", required=True)
        if name == "stop":
            p.add_argument("--timeout", type=float, default=35.0, help="seconds to wait before giving up")
        p.set_defaults(func=func)
    return parser


def _add_manage_arguments(p: argparse.ArgumentParser) -> None:
    from llmproxy.manage import commands

    commands.add_arguments(p)


def _add_tail_arguments(p: argparse.ArgumentParser) -> None:
    from llmproxy import tail

    tail.add_arguments(p)


def _add_dead_arguments(p: argparse.ArgumentParser) -> None:
    from llmproxy import events_dead

    events_dead.add_arguments(p, _Parser)


def _add_bench_arguments(p: argparse.ArgumentParser) -> None:
    from llmproxy import bench

    bench.add_arguments(p)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version"):
        argv = ["server", *argv]
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except ConfigError as exc:
        sys.stderr.write(f"llm-proxy: {exc}\n")
        return EXIT_CONFIG
    except StartupError as exc:
        sys.stderr.write(f"llm-proxy: {exc}\n")
        return 1
    except KeyboardInterrupt:
        return 130
