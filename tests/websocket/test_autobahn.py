"""RFC 6455 / 7692 conformance by Autobahn|Testsuite: its fuzzing client against a raw
WebSocket echo endpoint, on the subset of cases that runs in well under a minute
(``scripts/autobahn.py`` says which and why; ``--full`` there runs all of them). Every
case must end OK, NON-STRICT or INFORMATIONAL, judged from the suite's JSON report, and
the gateway's log must hold no traceback or error.

The suite is Python 2 code: the test installs it under build/autobahn/ the first time
(a virtualenv of Python 2.7), and is skipped with the reason where it cannot be
installed, or fails under CI=true."""

from __future__ import annotations

import importlib.util
import time

import pytest

from support import IN_CI, ROOT, config_gateway

_spec = importlib.util.spec_from_file_location("autobahn", ROOT / "scripts" / "autobahn.py")
autobahn = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(autobahn)

CI_CASE_COUNT = 265
"""How many cases the patterns in autobahn.CI_CASES select in autobahntestsuite 25.10.1:
a pattern that selected nothing would otherwise pass unnoticed."""


@pytest.mark.slow
@pytest.mark.timeout(1200)  # the first run installs the suite (about 4 minutes without pip's cache)
def test_autobahn_fuzzing_client(tmp_path):
    try:
        autobahn.ensure_wstest()
    except autobahn.Unavailable as exc:
        message = f"Autobahn|Testsuite cannot be installed: {exc}"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    with config_gateway(autobahn.CONFIG) as gw:
        start = time.monotonic()
        results = autobahn.fuzz(f"{gw.ws_url}/echo/websocket", autobahn.CI_CASES, tmp_path, timeout=600)
        print(f"{len(results)} Autobahn cases in {time.monotonic() - start:.0f}s")
        log = gw.output()
    assert len(results) == CI_CASE_COUNT, sorted(results, key=autobahn.case_key)
    assert autobahn.failures(results) == {}
    for case in ("5.6", "5.8", "5.19", "5.20", "7.1.5"):  # the cases sockway once failed
        assert results[case]["behavior"] == "OK", (case, results[case])
    assert "Traceback" not in log and " ERROR " not in log, log
