#!/usr/bin/env python3
"""Run the Autobahn|Testsuite fuzzing client against a sockway echo endpoint.

    .venv/bin/python scripts/autobahn.py            # the CI subset (under a minute)
    .venv/bin/python scripts/autobahn.py --full     # all 517 cases (over an hour on 2 busy cores)
    .venv/bin/python scripts/autobahn.py --cases 5.6 7.1.5

The test suite (``autobahntestsuite``, its ``wstest`` program) is Python 2 code, even
its latest release. What installs here: a virtualenv of Python 2.7 (pyenv's 2.7.18, or
``$SOCKWAY_PYTHON2``) made with ``virtualenv<20.22`` (the last releases that still
create Python 2 environments), ``autobahntestsuite==0.8.2`` for its dependencies (the
last release whose dependency pins resolve on Python 2), then ``25.10.1`` over it with
``--no-deps``. All of it goes under ``build/autobahn/`` and is made once (about 4
minutes the first time, 30 seconds when pip's cache has the wheels).

The gateway is started here with an echo endpoint at ``/echo/websocket`` (the fuzzing
client sends messages of up to 16 MiB, in up to 65,536 fragments: ``max_message_size``
is 64 MiB). Each case's verdict is read from the JSON report ``wstest`` writes
(``index.json``); the run passes when every case is OK, NON-STRICT or INFORMATIONAL
(UNIMPLEMENTED for a case the gateway does not claim).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "build" / "autobahn"
VENV = BUILD / "venv27"
WSTEST = VENV / "bin" / "wstest"
STAMP = VENV / ".installed-25.10.1"

ACCEPTED = {"OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED"}
"""Verdicts that pass. NON-STRICT: allowed by RFC 6455, not its strictest reading (for
example a close code echoed late); INFORMATIONAL: no verdict, the behaviour is
recorded; UNIMPLEMENTED: the feature is optional."""

CI_CASES = [
    "1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "9.7.*", "9.8.*", "10.*",
    "12.1.1", "12.1.11", "13.1.1", "13.3.1", "13.5.1", "13.7.1",
]
"""The subset the test suite runs, 265 cases in about 40 seconds on the 2-core machine
(70 when it is very busy): framing (1), pings and pongs (2), reserved bits (3), opcodes
(4), fragmentation with control frames in between (5), UTF-8, including fail-fast on
invalid text (6), the closing handshake and close codes (7), a thousand small messages
in a row (9.7, 9.8), automatic fragmentation (10), and permessage-deflate: a thousand
compressed messages of 16 bytes, and a thousand of 8 KiB each cut into 256-byte
fragments (12.1.1, 12.1.11), with four of the seven offers of different parameters
(13.1.1, 13.3.1, 13.5.1, 13.7.1). Left out because they take minutes and measure
throughput more than conformance: 9.1-9.6 (messages of 64 KiB to 16 MiB, whole or in
up to 65,536 fragments), the other 12.1 cases and 12.2-12.5 (a thousand compressed
messages of up to 128 KiB each, under various fragmentations), and the other 13 cases
(the same under each offer). ``--full`` runs all 517 cases of 25.10.1."""

PYTHON2_CANDIDATES = [
    os.environ.get("SOCKWAY_PYTHON2", ""),
    str(Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions" / "2.7.18" / "bin" / "python"),
    shutil.which("python2.7") or "",
]

CONFIG = """
[[endpoint]]
prefix = "/echo"
mode = "echo"
max_message_size = 67108864
max_buffer = 67108864
"""


class Unavailable(RuntimeError):
    """wstest cannot be installed on this machine (the reason says why)."""


def python2() -> str:
    for candidate in PYTHON2_CANDIDATES:
        if candidate and Path(candidate).is_file():
            return candidate
    raise Unavailable("no Python 2.7 (pyenv install 2.7.18, or set SOCKWAY_PYTHON2)")


def _run(args: list[str], what: str, timeout: float) -> None:
    result = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise Unavailable(f"{what} failed ({result.returncode}): {result.stderr[-2000:]}")


def ensure_wstest(timeout: float = 900) -> Path:
    """The ``wstest`` program, installed under build/autobahn/ if it is not yet."""
    if STAMP.is_file() and WSTEST.is_file():
        return WSTEST
    interpreter = python2()
    bootstrap = BUILD / "bootstrap"
    shutil.rmtree(VENV, ignore_errors=True)
    if not (bootstrap / "bin" / "virtualenv").is_file():
        _run([sys.executable, "-m", "venv", str(bootstrap)], "python3 -m venv", timeout)
        _run([str(bootstrap / "bin" / "pip"), "install", "-q", "virtualenv<20.22"], "pip install virtualenv",
             timeout)
    _run([str(bootstrap / "bin" / "virtualenv"), "-q", "-p", interpreter, str(VENV)], "virtualenv", timeout)
    pip = str(VENV / "bin" / "pip")
    _run([pip, "install", "-q", "autobahntestsuite==0.8.2"], "pip install autobahntestsuite==0.8.2", timeout)
    _run([pip, "install", "-q", "--no-deps", "autobahntestsuite==25.10.1"],
         "pip install autobahntestsuite==25.10.1", timeout)
    if not WSTEST.is_file():
        raise Unavailable(f"{WSTEST} was not installed")
    STAMP.touch()
    return WSTEST


def fuzz(url: str, cases: list[str], outdir: Path, timeout: float, exclude: list[str] | None = None) -> dict:
    """Run the fuzzing client against ``url``; returns ``{case id: result}`` from its
    JSON report, each result holding ``behavior`` and ``behaviorClose``."""
    wstest = ensure_wstest()
    outdir.mkdir(parents=True, exist_ok=True)
    spec = {
        "outdir": str(outdir),
        "servers": [{"agent": "sockway", "url": url}],
        "cases": cases,
        "exclude-cases": exclude or [],
        "exclude-agent-cases": {},
    }
    spec_path = outdir / "spec.json"
    spec_path.write_text(json.dumps(spec))
    result = subprocess.run([str(wstest), "-m", "fuzzingclient", "-s", str(spec_path)], cwd=outdir,
                            capture_output=True, text=True, timeout=timeout)
    index = outdir / "index.json"
    if result.returncode != 0 or not index.is_file():
        raise RuntimeError(f"wstest failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return json.loads(index.read_text())["sockway"]


def failures(results: dict) -> dict[str, str]:
    """Cases whose verdict, or whose closing behaviour, is not accepted."""
    bad = {}
    for case, result in results.items():
        verdicts = {result["behavior"], result["behaviorClose"]}
        if not verdicts <= ACCEPTED:
            bad[case] = f"{result['behavior']} (close: {result['behaviorClose']})"
    return bad


def case_key(case: str) -> tuple[int, ...]:
    return tuple(int(part) for part in case.split("."))


@contextlib.contextmanager
def echo_gateway():
    """``sockway serve`` with the echo endpoint above, on a free port."""
    import socket
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory(prefix="sockway-autobahn-") as tmp:
        config = Path(tmp) / "sockway.toml"
        config.write_text(CONFIG)
        log = open(Path(tmp) / "sockway.log", "w+")  # noqa: SIM115
        proc = subprocess.Popen([sys.executable, "-m", "sockway", "serve", "--config", str(config),
                                 "--port", str(port)], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            deadline = time.monotonic() + 15
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/sockway/health", timeout=1):
                        break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        log.seek(0)
                        raise RuntimeError(f"sockway did not start:\n{log.read()}") from None
                    time.sleep(0.05)
            yield f"ws://127.0.0.1:{port}/echo/websocket", log
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
            log.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="all cases (several minutes)")
    parser.add_argument("--cases", nargs="+", help="case ids or patterns, like 5.6 or 12.*")
    parser.add_argument("--outdir", type=Path, default=BUILD / "reports",
                        help="where wstest writes its HTML and JSON reports")
    parser.add_argument("--timeout", type=float, default=1800)
    args = parser.parse_args()
    cases = ["*"] if args.full else args.cases or CI_CASES
    try:
        ensure_wstest()
    except Unavailable as exc:
        print(f"autobahn: {exc}", file=sys.stderr)
        return 2
    with echo_gateway() as (url, log):
        start = time.monotonic()
        results = fuzz(url, cases, args.outdir, args.timeout)
        elapsed = time.monotonic() - start
        log.seek(0)
        errors = [line for line in log.read().splitlines() if "Traceback" in line or " ERROR " in line]
    counts = Counter(result["behavior"] for result in results.values())
    bad = failures(results)
    for case in sorted(bad, key=case_key):
        print(f"{case}: {bad[case]}")
    print(f"{len(results)} cases in {elapsed:.0f}s: "
          + ", ".join(f"{counts[v]} {v}" for v in sorted(counts)) + f"; reports in {args.outdir}")
    for line in errors:
        print(f"gateway log: {line}")
    return 1 if bad or errors else 0


if __name__ == "__main__":
    sys.exit(main())
