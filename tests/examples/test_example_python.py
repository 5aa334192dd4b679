"""examples/python: the blocking worker serving the /bot app endpoint (answers over the
HTTP API or over ZeroMQ) and the one-line publisher, against a real gateway running
examples/sockway.toml, with real WebSocket and SockJS clients."""

from __future__ import annotations

import json
import time

import pytest
from example_support import (
    EXAMPLES,
    PYTHON,
    ChannelsClient,
    SockJSClient,
    WsClient,
    chat_listener,
    program,
    run,
    token,
)

WORKER = str(EXAMPLES / "python" / "worker.py")
PUBLISH = str(EXAMPLES / "python" / "publish.py")
GREETING = "hello! I am the uppercase bot: send me a line."


@pytest.mark.parametrize("answer", ["http", "zmq"])
def test_worker_answers_clients(gw, answer):
    args = [PYTHON, WORKER, "--events", gw.push]
    args += ["--reply-zmq", gw.pull] if answer == "zmq" else ["--url", gw.url]
    with program(args, env={"SOCKWAY_API_KEY": gw.key}) as worker:
        with WsClient(gw.ws_url + "/bot/websocket") as ws, SockJSClient(gw.ws_url, "/bot") as sockjs:
            assert ws.recv() == GREETING
            assert sockjs.recv() == GREETING
            ws.send("hello bot")
            sockjs.send("and über-hello")
            assert ws.recv() == "HELLO BOT"
            assert sockjs.recv() == "AND ÜBER-HELLO"
            ws.send(b"\x00\x01")
            assert ws.recv() == "(binary messages are not for me)"
            assert ws.collect(0.3) == []  # nothing for one client reaches the other
        # The echo endpoint's clients are not the worker's business.
        with WsClient(gw.ws_url + "/echo/websocket") as echo:
            echo.send("x")
            assert echo.recv() == "x"
        # Both close events reach the worker (they are not lost when the clients go).
        deadline = time.monotonic() + 10
        while worker.output().count("worker: close ") < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        returncode = worker.stop()
        assert returncode == 0, worker.output()
        log = worker.output()
        assert f"serving /bot: events from {gw.push}" in log
        assert log.count("worker: open ") == 2 and log.count("worker: close ") == 2, log


def test_worker_starts_after_the_clients(gw):
    """Events wait in the gateway until a worker connects."""
    with WsClient(gw.ws_url + "/bot/websocket") as ws:
        ws.send("sent before any worker ran")
        with program([PYTHON, WORKER, "--events", gw.push, "--url", gw.url],
                     env={"SOCKWAY_API_KEY": gw.key}):
            assert ws.recv(10) == GREETING
            assert ws.recv() == "SENT BEFORE ANY WORKER RAN"


def test_worker_needs_a_key_or_zmq(gw):
    result = run([PYTHON, WORKER, "--events", gw.push], env={"SOCKWAY_API_KEY": ""})
    assert result.returncode == 2 and "set SOCKWAY_API_KEY" in result.stderr


def test_publish_over_http(gw):
    with chat_listener(gw) as chat, ChannelsClient(gw.ws_url + "/live/websocket", "news") as live:
        text = token("py")
        result = run([PYTHON, PUBLISH, "--url", gw.url, text], env={"SOCKWAY_API_KEY": gw.key})
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["endpoint"] == "/chat"
        chat.until(lambda m: m == text)

        result = run([PYTHON, PUBLISH, "--url", gw.url, "--channel", "news", '{"title": "from Python"}'],
                     env={"SOCKWAY_API_KEY": gw.key})
        assert result.returncode == 0, result.stderr
        message, _ = live.until(lambda m: json.loads(m).get("type") == "message")
        assert json.loads(message)["data"] == {"title": "from Python"}

    result = run([PYTHON, PUBLISH, "--url", gw.url, "x"], env={"SOCKWAY_API_KEY": "wrong"})
    assert result.returncode == 1 and "the gateway refused: 401 unauthorized" in result.stderr


def test_publish_function_for_a_view(gw):
    """notify_everyone(), the one line a Django or Flask view would call."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import publish; "
            "print(publish.notify_everyone(sys.argv[2])['endpoint'])")
    text = token("view")
    with chat_listener(gw) as chat:
        result = run([PYTHON, "-c", code, str(EXAMPLES / "python"), text],
                     env={"SOCKWAY_API_KEY": gw.key, "SOCKWAY_URL": gw.url})
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "/chat"
        chat.until(lambda m: m == text)


def test_publish_over_zeromq_delivers_every_run(gw):
    """--zmq: ZmqPublisher, a PUSH to the gateway's PULL socket, from a process that
    exits right after sending: every run's message arrives."""
    with chat_listener(gw) as chat:
        sent = [token("zmq") for _ in range(8)]
        for text in sent:
            result = run([PYTHON, PUBLISH, "--zmq", gw.pull, text], env={"SOCKWAY_API_KEY": ""})
            assert result.returncode == 0, result.stderr
        received = [chat.until(lambda m, want=want: m == want)[0] for want in sent]
        assert received == sent


def test_sdk_worker_keeps_going_when_a_handler_fails(gw):
    """sockway.app.Worker, as in its docstring: answering a client that has already left
    raises GatewayError (404); the worker logs it and serves the next client."""
    from sockway.app import Client, Worker

    with WsClient(gw.ws_url + "/bot/websocket") as gone:
        gone.send("answer me after I left")
    with WsClient(gw.ws_url + "/bot/websocket") as stays:
        stays.send("still here")
        worker = Worker(gw.push, Client(gw.url, gw.key))

        @worker.on("message")
        def echo(event, reply):
            reply.send(event["conn"], event["data"].upper())

        try:
            # Every event waiting (earlier tests' too): it stops after 2 s without one.
            handled = worker.run(timeout=2)
        finally:
            worker.close()
        assert handled >= 5  # open, message, close; open, message
        assert worker.failed == 1
        assert stays.recv() == "STILL HERE"
