"""The steady-rate, connection storm and reconnect storm benchmarks (``python -m benchmarks
--scenarios steady,storm,reconnect``) run with tiny sizes: the code of the benchmark must
not rot. Their figures are not judged here (they are measured, not asserted); what is
checked is that every server is measured, in a well-formed JSON line whose numbers agree
with each other, and that the tables are printed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from support import ROOT, require_file, require_program

COMMON = ["--quiet-wait", "0", "--retries", "0"]


def _run(tmp_path: Path, *args: str) -> tuple[list[dict], subprocess.CompletedProcess]:
    require_program("node", "the benchmark's clients and peers run on Node.js (>= 18)")
    require_file(ROOT / "node_modules" / "socket.io" / "package.json", ": run `npm install` (the peers' packages)")
    run = subprocess.run([sys.executable, "-m", "benchmarks", *args, *COMMON, "--results-dir", str(tmp_path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=100)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    records = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    saved = [json.loads(line) for path in tmp_path.glob("*.jsonl") for line in path.read_text().splitlines()]
    assert saved == records
    return records, run


def test_steady_rate_measures_every_server_at_the_rate(tmp_path: Path) -> None:
    records, run = _run(tmp_path, "--scenarios", "steady", "--steady", "20x50", "--steady-seconds", "0.6",
                        "--steady-warmup", "0.2")
    assert [(r["server"], r["transport"]) for r in records] == [
        ("sockway", "raw"), ("ws", "raw"), ("socket.io", "socketio"), ("sockway", "sockjs"), ("sockjs-node", "sockjs")]
    for r in records:
        assert r["scenario"] == "steady" and r["ok"] is True, r.get("error")
        assert (r["clients"], r["rate"], r["offered_deliveries_per_s"]) == (20, 50, 1000)
        assert r["saturated"] is False, r["saturated_reason"]
        assert r["sent"] == 30 and r["expected"] == 20 * r["sent"] == r["delivered"]
        assert r["losses"] == r["undelivered"] == r["duplicates"] == r["closed_early"] == 0
        assert 0 < r["p50_ms"] <= r["p99_ms"] <= r["max_ms"]
        for key in ("deliveries_per_s", "send_lag_p99_ms", "server_cpu_util", "gen_cpu_util", "other_cpu_util"):
            assert isinstance(r[key], int | float), (key, r[key])
    assert "pings_answered" in records[2]
    table = run.stdout[run.stdout.index("Steady rate"):]
    assert "20 x 50/s" in table and "p99 vs ws" in table and "1.00x" in table
    assert "[gen steady 20 x 50/s socket.io socketio]" in run.stderr


def test_connection_storm_reports_the_rate_and_the_checks_made(tmp_path: Path) -> None:
    records, run = _run(tmp_path, "--scenarios", "storm", "--storm-connections", "40", "--storm-rounds", "1",
                        "--transports", "raw,sockjs")
    assert [(r["server"], r["transport"]) for r in records] == [
        ("sockway", "raw"), ("ws", "raw"), ("sockway", "sockjs"), ("sockjs-node", "sockjs")]
    for r in records:
        assert r["scenario"] == "storm" and r["ok"] is True, r.get("error")
        assert r["connections"] == 40 and r["connects_per_s"] == pytest.approx(40 / r["seconds"], rel=0.01, abs=1)
        assert r["server_us_per_connect"] == pytest.approx(r["server_cpu_s"] * 1e6 / 40, abs=0.1)
        assert 0 < r["handshake_p50_ms"] <= r["handshake_p99_ms"] <= r["handshake_max_ms"]
    by = {(r["server"], r["transport"]): r for r in records}
    # sockway and ws check the Origin and negotiate the subprotocol and permessage-deflate
    # offered; sockjs-node does neither (its numbers are without them, and the table says so).
    for key in (("sockway", "raw"), ("ws", "raw")):
        assert by[key]["origin_checked"] is True and by[key]["foreign_origin_answer"].startswith("HTTP/1.1 403")
        assert by[key]["subprotocol_chosen"] == 40 and by[key]["deflate_negotiated"] == 40
    assert by[("sockway", "sockjs")]["origin_checked"] is True and by[("sockway", "sockjs")]["deflate_negotiated"] == 40
    assert by[("sockjs-node", "sockjs")]["origin_checked"] is False
    table = run.stdout[run.stdout.index("Connection storm"):]
    assert "x ws" in table and "x sockjs-node" in table and "origin NOT checked" in table


def test_reconnect_storm_brings_every_subscriber_back_without_a_loss(tmp_path: Path) -> None:
    require_program("redis-server", "the reconnect scenario's gateway nodes share a Redis broker")
    records, run = _run(tmp_path, "--scenarios", "reconnect", "--reconnect-subscribers", "20",
                        "--reconnect-settle", "0.5")
    assert [r["server"] for r in records] == ["sockway", "ws"]
    sockway = records[0]
    for r in records:
        assert r["scenario"] == "reconnect" and r["ok"] is True, r.get("error")
        assert r["closes"] and sum(r["closes"].values()) == 20, r["closes"]
        assert r["accept_s"] > 0 and 0 < r["reconnect_s"] <= r["back_s"] < r["total_s"]
        assert r["total_s"] >= r["shutdown_s"] + r["accept_s"]
    assert sockway["closes"] == {"close 1001": 20}  # going away (RFC 6455 section 7.4.1)
    assert sockway["published"] > 0 and sockway["losses"] == sockway["unrecovered"] == sockway["duplicates"] == 0
    assert sockway["delivered"] == 20 * sockway["published"]
    assert sockway["recovered_publications"] > 0  # published while the gateway was down
    table = run.stdout[run.stdout.index("Reconnect storm"):]
    assert "back vs ws" in table and "0 not recovered" in table
