"""The abuse benchmark (``python -m benchmarks --scenarios abuse``) run for a few seconds
with tiny sizes: the code of the benchmark must not rot. Its figures are not judged
here (they are measured, not asserted); what is checked is that every phase, every
abuser and every target is measured and reported in a well-formed JSON line, and that
each target's verdict follows from the numbers beside it."""

from __future__ import annotations

import json
import subprocess
import sys

from support import ROOT, require_program

KINDS = ["silent", "slow-heads", "slow-bodies", "fragments", "history-flood", "newline-flood", "sockjs-churn",
         "non-reader"]


def test_abuse_scenario_reports_every_phase_abuser_and_target(tmp_path) -> None:
    require_program("node", "the benchmark's clients run on Node.js (>= 18)")
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--scenarios", "abuse", "--duration", "4", "--subscribers", "10",
         "--echo-clients", "3", "--publish-rate", "20", "--echo-rate", "5", "--abuse-scale", "0.01",
         "--retries", "0", "--quiet-wait", "0", "--results-dir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=90)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = [line for line in run.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1, run.stdout
    record = json.loads(lines[0])
    saved = list(tmp_path.glob("*.jsonl"))
    assert len(saved) == 1 and json.loads(saved[0].read_text()) == record

    assert record["scenario"] == "abuse" and record["ok"] is True, record.get("error")
    assert record["abusers"] == KINDS
    for name in ("before", "during", "after"):
        phase = record["phases"][name]
        assert phase["published"] > 0 and phase["deliveries_expected"] == 10 * phase["published"]
        assert phase["losses"] == phase["deliveries_expected"] - phase["delivered"]
        assert phase["echo_sent"] > 0
        for key in ("p50_ms", "p99_ms", "echo_p99_ms", "rss_settled_kib", "fds_settled", "gateway_cpu"):
            assert isinstance(phase[key], int | float), (name, key, phase[key])
    for kind in KINDS:
        report = record["abuse"][kind]
        assert report["ok"] is True and report["opened"] >= 1, (kind, report)
    assert record["abuse"]["newline-flood"]["bytes_sent"] >= 65536
    assert record["abuse"]["sockjs-churn"]["sessions"] >= 1

    targets = record["targets"]
    assert set(targets) == {"zero_losses", "p99", "echo_p99", "rss", "fds", "newcomers"}
    before, during, after = (record["phases"][n] for n in ("before", "during", "after"))
    lost = sum(p["losses"] + p["echo_losses"] for p in (before, during, after))
    assert targets["zero_losses"]["measured"] == lost
    ratio = round(during["p99_ms"] / before["p99_ms"], 2)
    assert targets["p99"]["ratio"] == ratio and targets["p99"]["met"] is (ratio <= 2)
    rss = targets["rss"]
    assert rss["met"] is (rss["after_kib"] <= 1.10 * rss["before_kib"])
    fds = targets["fds"]
    assert fds["met"] is (fds["after"] <= fds["before"])
    samples = record["timeline"]
    assert {s["phase"] for s in samples} == {"before", "during", "after"}
    assert samples[0]["phase"] == "before" and samples[-1]["phase"] == "after"
    assert all(isinstance(s["rss_kib"], int) and isinstance(s["fds"], int) for s in samples)
    assert "Targets (measured, not asserted)" in run.stdout
    assert "[abuse] during" in run.stderr
