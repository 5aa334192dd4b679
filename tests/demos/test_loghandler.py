"""sockway.loghandler.SockwayHandler against the demo gateway, seen by a subscriber of
the ``logs`` channel (what the logs page does): the record's fields, ZeroMQ and HTTP,
nothing lost by a process that logs and exits at once, and a failure reported once."""

from __future__ import annotations

import contextlib
import json
import logging
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator

import pytest
from demo_support import ROOT, DemoGateway, T, demo_gateway
from websockets.sync.client import connect

from sockway.loghandler import SockwayHandler
from support import free_port


@pytest.fixture(scope="module")
def demo() -> Iterator[DemoGateway]:
    with demo_gateway() as running:
        yield running


@contextlib.contextmanager
def logs_subscriber(demo: DemoGateway) -> Iterator[Callable]:
    """Yields ``next_record(timeout)``: the data of the next publication on ``logs``."""
    with connect(demo.ws + "/live/websocket", open_timeout=T, max_queue=None) as ws:
        assert json.loads(ws.recv(T))["type"] == "connected"
        ws.send(json.dumps({"op": "subscribe", "channel": "logs", "id": 1}))
        while json.loads(ws.recv(T)).get("type") != "reply":
            pass

        def next_record(timeout: float = T) -> dict:
            while True:
                frame = json.loads(ws.recv(timeout))
                if frame.get("type") == "message":
                    return frame["data"]

        yield next_record


def make_logger(handler: logging.Handler) -> logging.Logger:
    logger = logging.getLogger(f"test.{uuid.uuid4().hex[:8]}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    return logger


@pytest.mark.parametrize("via", ["zeromq", "http"])
def test_record_fields(demo: DemoGateway, via: str) -> None:
    handler = SockwayHandler(demo.pull) if via == "zeromq" else SockwayHandler(url=demo.url, key=demo.key)
    logger = make_logger(handler)
    try:
        with logs_subscriber(demo) as next_record:
            logger.info("order %s paid", 1042)
            line = sys._getframe().f_lineno - 1
            try:
                {}["missing"]
            except KeyError:
                logger.exception("lookup failed")
            info, error = next_record(), next_record()
    finally:
        handler.close()
    assert info["level"] == "INFO" and info["logger"] == logger.name and info["message"] == "order 1042 paid"
    assert info["module"] == "test_loghandler" and info["line"] == line
    assert isinstance(info["time"], float) and isinstance(info["process"], int)
    assert "exception" not in info
    assert error["level"] == "ERROR" and error["message"] == "lookup failed"
    assert error["exception"].startswith("Traceback") and "KeyError: 'missing'" in error["exception"]


def test_short_lived_process_loses_nothing(demo: DemoGateway) -> None:
    """Logs 200 records and exits at once: every one arrives, in order."""
    mark = uuid.uuid4().hex[:8]
    program = f"""
import logging
from sockway.loghandler import SockwayHandler
log = logging.getLogger("batch")
log.addHandler(SockwayHandler({demo.pull!r}))
log.setLevel(logging.INFO)
for i in range(200):
    log.info("{mark} %d", i)
"""
    with logs_subscriber(demo) as next_record:
        result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=30,
                                cwd=ROOT)
        assert result.returncode == 0, result.stderr
        got = [next_record()["message"] for _ in range(200)]
    assert got == [f"{mark} {i}" for i in range(200)]


def test_failure_reported_once(capsys: pytest.CaptureFixture[str]) -> None:
    """No gateway: logging goes on, the problem is told once (not once per record)."""
    handler = SockwayHandler(url=f"http://127.0.0.1:{free_port()}", key="k", timeout=1)
    logger = make_logger(handler)
    try:
        for i in range(5):
            logger.warning("record %d", i)
    finally:
        handler.close()
    err = capsys.readouterr().err
    assert err.count("--- Logging error ---") == 1, err
    assert "Connection refused" in err


def test_needs_one_destination() -> None:
    with pytest.raises(ValueError, match="either a ZeroMQ address"):
        SockwayHandler()
    with pytest.raises(ValueError, match="either a ZeroMQ address"):
        SockwayHandler("tcp://127.0.0.1:1", url="http://127.0.0.1:1", key="k")
