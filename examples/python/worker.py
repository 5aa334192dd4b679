"""An uppercase bot: a blocking Python worker that serves the clients of an app endpoint.

The gateway turns each client's open, message and close on an ``app`` endpoint into an
event on its ZeroMQ PUSH socket; this worker PULLs them in a plain loop (no asyncio) and
answers with commands: through the HTTP API (default) or, fire and forget, through
ZeroMQ (``--reply-zmq``)::

    export SOCKWAY_API_KEY=dev-key
    .venv/bin/sockway serve --config examples/sockway.toml           # /bot is in app mode
    .venv/bin/python examples/python/worker.py                       # answers over HTTP
    .venv/bin/python examples/python/worker.py --reply-zmq tcp://127.0.0.1:5557

    .venv/bin/python -m websockets ws://127.0.0.1:8080/bot/websocket # then type a line

Events wait in the gateway (up to its event_queue_size) while no worker is connected.
Several workers may run at once: the PUSH socket deals events out in turn, so a worker
must not assume it sees every event of a connection (this one keeps no state). There is
no acknowledgement: events already handed to a worker that stops are lost with it.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

from sockway.app import Client, GatewayError, Worker, ZmqPublisher

GREETING = "hello! I am the uppercase bot: send me a line."


def log(text: str) -> None:
    print(f"worker: {text}", file=sys.stderr, flush=True)


def make_worker(events: str, answer: Client | ZmqPublisher, endpoint: str) -> Worker:
    worker = Worker(events, answer)  # type: ignore[arg-type] - anything with .send(conn, data)

    def answering(handler):
        """Skip other endpoints' events, and keep running when an answer fails."""
        def run(event: dict, gateway: Client | ZmqPublisher) -> None:
            if event.get("endpoint") != endpoint:
                return
            try:
                handler(event, gateway)
            except GatewayError as exc:  # e.g. the client left before the answer
                log(f"{event['type']} {event['conn']}: the gateway refused the answer: {exc}")
        return run

    @worker.on("open")
    @answering
    def on_open(event: dict, gateway: Client | ZmqPublisher) -> None:
        log(f"open {event['conn']} from {event.get('remote')} over {event.get('transport')}")
        gateway.send(event["conn"], GREETING)

    @worker.on("message")
    @answering
    def on_message(event: dict, gateway: Client | ZmqPublisher) -> None:
        if event.get("binary"):
            gateway.send(event["conn"], "(binary messages are not for me)")
            return
        gateway.send(event["conn"], event["data"].upper())

    @worker.on("close")
    @answering
    def on_close(event: dict, gateway: Client | ZmqPublisher) -> None:
        reason = event.get("reason") or ""
        log(f"close {event['conn']} (code {event.get('code')}{': ' + reason if reason else ''})")

    return worker


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", default="tcp://127.0.0.1:5556",
                        help="the gateway's [zeromq] push address (default: %(default)s)")
    parser.add_argument("--endpoint", default="/bot", help="the app endpoint served (default: %(default)s)")
    parser.add_argument("--url", default=os.environ.get("SOCKWAY_URL", "http://127.0.0.1:8080"),
                        help="the gateway's HTTP API, key in SOCKWAY_API_KEY (default: %(default)s)")
    parser.add_argument("--reply-zmq", metavar="ADDRESS",
                        help="answer through the gateway's [zeromq] pull address instead of HTTP")
    args = parser.parse_args(argv)

    if args.reply_zmq:
        answer: Client | ZmqPublisher = ZmqPublisher(args.reply_zmq)
        how = f"ZeroMQ {args.reply_zmq}"
    else:
        key = os.environ.get("SOCKWAY_API_KEY")
        if not key:
            parser.error("set SOCKWAY_API_KEY to the gateway's [api] key (or use --reply-zmq)")
        answer = Client(args.url, key)
        how = f"HTTP {args.url}"

    worker = make_worker(args.events, answer, args.endpoint)
    # SIGTERM ends the loop like Ctrl-C does, so the sockets are closed cleanly.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    log(f"serving {args.endpoint}: events from {args.events}, answers through {how}")
    try:
        worker.run()
    except KeyboardInterrupt:
        pass
    finally:
        worker.close()
        if isinstance(answer, ZmqPublisher):
            answer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
