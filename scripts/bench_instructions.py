#!/usr/bin/env python3
"""Instructions per proxied request, counted by valgrind (callgrind): an A/B measure that does not move
with the machine's speed. Never part of the test suite.

    .venv/bin/python scripts/bench_instructions.py [--config none,streams+worker] [--requests 1000]

Our VMs change speed by up to 2x from one hour to the next, so CPU-time benchmarks (bench.py) need
interleaved runs of old and new code to show a change of a few percent. Counted instructions repeat
to within ~0.2% for the same code (PYTHONHASHSEED is fixed), so this script shows such a change in
one run of each. What it does not show: system calls and the kernel's socket work (user space only);
that an instruction is not a fixed time; and batching that depends on time. Under valgrind a request
takes ~50x longer, so the 2 ms event hold and the 5 ms producer linger gather one event each where at
real speed they gather several: per-batch costs weigh far more here than in bench.py. Use it to
compare code, and bench.py for what a request costs.

For each configuration (the names of bench.py --matrix) it starts the fake upstream natively and the
server under `valgrind --tool=callgrind --trace-children=yes` (its dispatcher workers are counted
too), sends `--warmup` requests, zeroes the counters, sends `--requests` more one after another on one
keep-alive connection, waits for the event log to catch up, and reads each process's totals.
`callgrind_control` zeroes and dumps every callgrind process on the machine: run nothing else under
callgrind meanwhile.
"""

from __future__ import annotations

import argparse
import http.client
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import CONFIGS, PATH, REQUEST_BODY, count_lines, fake_upstream, proxy_server


def send(port: int, token: str, n: int) -> None:
    """``n`` chat completions, one after another on one keep-alive connection; each must be a 200."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    try:
        for _ in range(n):
            conn.request("POST", PATH, body=REQUEST_BODY, headers=headers)
            resp = conn.getresponse()
            resp.read()
            if resp.status != 200:
                raise RuntimeError(f"the proxy answered {resp.status}")
    finally:
        conn.close()


def wait_lines(event_log: Path | None, n: int, timeout: float = 600.0) -> None:
    """Until the event log holds ``n`` lines (nothing to wait for without one)."""
    deadline = time.monotonic() + timeout
    while event_log is not None and count_lines(event_log) < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{event_log} did not reach {n} lines in {timeout:.0f}s")
        time.sleep(0.2)


def wait_gone(marker: str, timeout: float = 30.0) -> None:
    """Until no process has ``marker`` in its command line."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if subprocess.run(["pgrep", "-f", marker], capture_output=True).returncode != 0:
            return
        time.sleep(0.2)


def callgrind_control(flag: str) -> None:
    subprocess.run(["callgrind_control", flag], check=True, capture_output=True)


def totals(out_dir: Path, dump: int) -> dict[int, int]:
    """Instructions (Ir) per process in dump number ``dump`` (callgrind names it ``cg.<pid>.<dump>``)."""
    found: dict[int, int] = {}
    for path in out_dir.glob(f"cg.*.{dump}"):
        pid = int(path.name.split(".")[1])
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith("summary:"):  # what callgrind_annotate calls PROGRAM TOTALS
                found[pid] = int(line.split()[1])
                break
    return found


def dumped(out_dir: Path, timeout: float = 60.0) -> dict[int, int]:
    """The first dump's totals, once every process callgrind started (``cg.<pid>``) has written one."""
    deadline = time.monotonic() + timeout
    while True:
        started = {int(p.name.split(".")[1]) for p in out_dir.glob("cg.*") if p.name.count(".") == 1}
        counted = totals(out_dir, 1)
        if started and started <= counted.keys():
            return counted
        if time.monotonic() > deadline:
            raise RuntimeError(f"callgrind dumps missing in {out_dir}: {sorted(started - counted.keys())}")
        time.sleep(0.5)


def measure(name: str, bus: str, events: bool, up_port: int, args: argparse.Namespace) -> dict:
    out_dir = Path(tempfile.mkdtemp(prefix="llmproxy-callgrind-"))
    valgrind = ["valgrind", "-q", "--tool=callgrind", "--trace-children=yes",
                f"--callgrind-out-file={out_dir}/cg.%p", sys.executable]  # fmt: skip
    try:
        limits = {"rate_limit_per_minute": args.rate_limit} if args.rate_limit else None
        with proxy_server(
            bus, events, 1, up_port, launcher=valgrind, start_timeout=600, token_limits=limits
        ) as px:
            send(px["port"], px["token"], args.warmup)
            wait_lines(px["event_log"], args.warmup)  # a worker under valgrind takes a while to start
            callgrind_control("-z")
            send(px["port"], px["token"], args.requests)
            wait_lines(px["event_log"], args.warmup + args.requests)  # the workers' share is done too
            callgrind_control("-d")
            counted = dumped(out_dir)
            server = counted.pop(px["pid"], None)
        if server is None:
            raise RuntimeError(f"no callgrind dump of the server in {out_dir}")
        workers = sum(counted.values())
        return {"config": name, "requests": args.requests, "server": server / args.requests,
                "workers": workers / args.requests, "processes": 1 + len(counted)}  # fmt: skip
    finally:
        wait_gone(str(out_dir))  # the last of them (multiprocessing's resource tracker) writes on its exit
        shutil.rmtree(out_dir, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="none,streams+worker", help=f"comma list of {', '.join(CONFIGS)}")
    ap.add_argument("--requests", type=int, default=1000, help="requests counted (default 1000)")
    ap.add_argument("--warmup", type=int, default=300, help="requests sent before counting (default 300)")
    ap.add_argument(
        "--rate-limit",
        type=int,
        default=0,
        help="the token's rate_limit_per_minute (default none); with RATE_LIMIT_BACKEND=redis and REDIS_ADDR "
        "in the environment, each request takes the shared limiter's Redis round trip",
    )
    args = ap.parse_args()
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("valgrind is not installed: sudo apt-get install -y valgrind", file=sys.stderr)
        return 2
    names = args.config.split(",")
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        ap.error(f"unknown configuration {unknown}; known: {', '.join(CONFIGS)}")
    os.environ["PYTHONHASHSEED"] = "0"  # same dict and set layouts every run: repeatable counts
    results = []
    with fake_upstream() as up_port:
        for name in names:
            print(
                f"{name}: the server under callgrind (slow: a minute or more to start)",
                file=sys.stderr,
                flush=True,
            )
            bus, events = CONFIGS[name]
            results.append(measure(name, bus, events, up_port, args))
    print(
        f"\ninstructions per request (callgrind, user space only), {args.requests} requests after {args.warmup}"
    )
    print(f"  {'config':<16}{'total':>12}{'server':>12}{'workers':>12}")
    for r in results:
        total = r["server"] + r["workers"]
        print(f"  {r['config']:<16}{total:>12,.0f}{r['server']:>12,.0f}{r['workers']:>12,.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
