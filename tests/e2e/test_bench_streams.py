"""scripts/bench_streams.py --quick, so the open-streams benchmark cannot rot: 50 streams through a real
server, every one complete, every one's event in the log. Its figures are not asserted (benchmarks print
them); only that it measured them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_open_streams_benchmark_holds_fifty_streams_and_logs_every_event(tmp_path: Path) -> None:
    out = tmp_path / "streams.json"
    script = ROOT / "scripts" / "bench_streams.py"
    done = subprocess.run(
        [sys.executable, str(script), "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    (run,) = json.loads(out.read_text())["runs"]
    assert run["streams"] == 50 and run["completed"] == 50 and run["errors"] == {}
    assert run["complete_with_every_chunk"] == 50
    assert run["direct_streams"] == run["direct_completed"] == 5
    assert run["events_logged"] == 50 and run["events_missing"] == 0
    assert run["peak_fds"] > run["idle_fds"] and run["peak_rss_mb"] > 0
    assert run["lag_probe_ms"]["run"]["samples"] > 0 and run["server_lag"]["samples"] >= 1
    assert run["ttfb_ms"]["proxy_p50"] > 0 and run["ttfb_ms"]["direct_p50"] > 0
