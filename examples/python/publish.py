"""Publish to browsers from synchronous Python: a Django view, a Flask route, a cron job.

The one line, through the HTTP API (the gateway answers, so errors are exceptions)::

    from sockway.app import Client
    Client("http://127.0.0.1:8080", key=os.environ["SOCKWAY_API_KEY"]).broadcast("/chat", "hello")

or fire and forget through ZeroMQ (a PUSH to the gateway's [zeromq] pull socket)::

    from sockway.app import ZmqPublisher
    ZmqPublisher("tcp://127.0.0.1:5557").publish("news", {"title": "hello"})

From the command line, against examples/sockway.toml::

    export SOCKWAY_API_KEY=dev-key
    .venv/bin/python examples/python/publish.py "hello from Python"          # every client of /chat
    .venv/bin/python examples/python/publish.py --channel news '{"title": "hi"}'
    .venv/bin/python examples/python/publish.py --zmq tcp://127.0.0.1:5557 "no key needed"
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from sockway.app import Client, GatewayError, ZmqPublisher


def notify_everyone(text: str) -> dict:
    """What a view calls after saving something: the one line. A Client is only a URL
    and a key, cheap to make; each call is one blocking HTTP request."""
    return Client(os.environ.get("SOCKWAY_URL", "http://127.0.0.1:8080"),
                  key=os.environ["SOCKWAY_API_KEY"]).broadcast("/chat", text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Publish MESSAGE to browsers through a sockway gateway.")
    parser.add_argument("message", help="the text; JSON (an object, a number...) is sent as that value")
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--endpoint", default="/chat",
                        help="every client of this broadcast endpoint (default: %(default)s)")
    target.add_argument("--channel", help="every subscriber of this channel")
    parser.add_argument("--url", default=os.environ.get("SOCKWAY_URL", "http://127.0.0.1:8080"),
                        help="the gateway's HTTP API; the key is read from SOCKWAY_API_KEY (default: %(default)s)")
    parser.add_argument("--zmq", metavar="ADDRESS",
                        help="send through the gateway's [zeromq] pull socket instead (no answer, no key)")
    args = parser.parse_args(argv)

    try:
        data: Any = json.loads(args.message)
    except ValueError:
        data = args.message

    if args.zmq:
        # close() (here: the end of the with block) waits for the message to leave.
        with ZmqPublisher(args.zmq) as publisher:
            if args.channel:
                publisher.publish(args.channel, data)
            else:
                publisher.broadcast(args.endpoint, data)
        return 0

    key = os.environ.get("SOCKWAY_API_KEY")
    if not key:
        parser.error("set SOCKWAY_API_KEY to the gateway's [api] key (or use --zmq)")
    gateway = Client(args.url, key)
    try:
        if args.channel:
            result = gateway.publish(args.channel, data)
        else:
            result = gateway.broadcast(args.endpoint, data)
    except GatewayError as exc:
        print(f"publish.py: the gateway refused: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"publish.py: cannot reach {args.url}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
