"""``sockway publish``: publish to a channel or send to a connection from the command
line, through any bridge (what zmqc was to the talk).

    sockway publish news '{"title": "hi"}' --json --url http://127.0.0.1:8080 --key K
    sockway publish news hello --zmq tcp://127.0.0.1:5557          # PUSH to [zeromq] pull
    sockway publish news hello --zmq tcp://127.0.0.1:5555 --pub    # PUB to [zeromq] sub
    sockway publish --raw '{"a": 1}' --zmq tcp://127.0.0.1:5555 --pub  # as is, to [zeromq] default
    sockway publish news hello --redis redis://127.0.0.1:6379/0    # a cluster on the redis broker
    sockway publish news hello --nats nats://127.0.0.1:4222        # a cluster on the nats broker
    sockway publish --conn 3f9a1c2e.1b hello --url ... --key K      # one connection
    sockway publish --endpoint /chat hello --url ... --key K       # a broadcast endpoint
    tail -f app.log | sockway publish logs --url ... --key K       # one message per line

Without DATA, each stdin line is published. DATA is a string unless ``--json``.
Through ZeroMQ, commands go to the PULL socket only: with ``--pub`` (the SUB socket) a
channel publish is sent as two frames ``[channel, data]``, and ``--conn``/``--endpoint``
are refused. ``--raw`` sends DATA as one frame, exactly as given, which the gateway
delivers byte for byte to its ``[zeromq] default`` target.
Output: a JSON line per message, the gateway's answer (HTTP API, Redis, NATS) or, through
ZeroMQ, which gives none, what was sent to which address.
Exit status: 0 when everything was accepted, 1 when the gateway refused something or
could not be reached (the reason is printed), 2 for a usage error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from sockway.tools import broker_target

__all__ = ["add_parser", "run"]


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("publish", help="publish to a channel (or send to a connection)",
                       description=__doc__.split("\n\n")[0].replace("``", ""),
                       epilog="examples:\n" + "\n\n".join(__doc__.split("\n\n")[1:]).replace("``", ""),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("channel", nargs="?", help="channel name (omit with --conn or --endpoint)")
    p.add_argument("data", nargs="?", help="the message; without it, stdin lines")
    target = p.add_mutually_exclusive_group()
    target.add_argument("--conn", help="send to this connection id instead")
    target.add_argument("--endpoint", help="broadcast to this broadcast endpoint instead")
    p.add_argument("--json", action="store_true", help="DATA (or each line) is JSON")
    via = p.add_mutually_exclusive_group()
    via.add_argument("--url", default=os.environ.get("SOCKWAY_URL"),
                     help="gateway base URL for the HTTP API (or SOCKWAY_URL)")
    via.add_argument("--zmq", metavar="ADDRESS", help="ZeroMQ address of the gateway's PULL (or SUB, with --pub)")
    via.add_argument("--nats", metavar="URL",
                     help="NATS URL of a cluster using the nats broker (the gateway's [broker] url)")
    via.add_argument("--redis", metavar="URL",
                     help="the Redis broker URL of a cluster ([broker] url, its ?prefix= included)")
    p.add_argument("--key", default=os.environ.get("SOCKWAY_API_KEY"), help="API key (or SOCKWAY_API_KEY)")
    p.add_argument("--pub", action="store_true", help="with --zmq: a PUB socket (waits for the subscription)")
    p.add_argument("--raw", action="store_true",
                   help="with --zmq: DATA as one frame, exactly as given, to the gateway's [zeromq] default "
                        "(no CHANNEL)")
    return p


def _commands(args: argparse.Namespace, lines) -> list[dict]:
    out = []
    for line in lines:
        if args.json:
            try:
                data = json.loads(line)
            except ValueError as exc:
                print(f"sockway publish: --json given but {line[:60]!r} is not JSON: {exc}", file=sys.stderr)
                raise SystemExit(2) from None
        else:
            data = line
        if args.conn:
            out.append({"op": "send", "conn": args.conn, "data": data})
        elif args.endpoint:
            out.append({"op": "broadcast", "endpoint": args.endpoint, "data": data})
        else:
            out.append({"op": "publish", "channel": args.channel, "data": data})
    return out


def _usage_error(message: str) -> int:
    print(f"sockway publish: {message}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    if args.raw:
        if not args.zmq:
            return _usage_error("--raw sends one ZeroMQ frame: give --zmq ADDRESS")
        if args.conn or args.endpoint or args.json or args.data is not None:
            return _usage_error("--raw takes DATA alone (no CHANNEL, --conn, --endpoint or --json): "
                                "it goes as it is to the gateway's [zeromq] default")
        args.data, args.channel = args.channel, None  # the one positional is the data
    elif args.conn or args.endpoint:
        if args.pub:
            return _usage_error("the gateway's SUB socket (--pub) runs no command: send --conn and "
                                "--endpoint to its PULL socket (--zmq without --pub)")
        # The first positional is then the data.
        if args.data is None and args.channel is not None:
            args.data, args.channel = args.channel, None
    elif not args.channel:
        return _usage_error("give a CHANNEL (or --conn ID / --endpoint PREFIX, or --raw)")
    if not (args.url or args.zmq or args.redis or args.nats):
        print("sockway publish: say how to reach the gateway: --url (HTTP API), --zmq, --redis or --nats",
              file=sys.stderr)
        return 2

    def lines():
        if args.data is not None:
            yield args.data
            return
        for line in sys.stdin:
            line = line.rstrip("\n")
            if line:
                yield line

    status = 0
    if args.url:
        from sockway.app import Client, GatewayError

        if not args.key:
            print("sockway publish: the HTTP API needs --key (or SOCKWAY_API_KEY)", file=sys.stderr)
            return 2
        client = Client(args.url, args.key)
        for line in lines():
            for cmd in _commands(args, [line]):
                op = cmd.pop("op")
                try:
                    result = client.command(op, **cmd)
                except GatewayError as exc:
                    print(f"sockway publish: refused: {exc}", file=sys.stderr)
                    status = 1
                except OSError as exc:
                    print(f"sockway publish: cannot reach {args.url}: {exc}", file=sys.stderr)
                    return 1
                else:
                    print(json.dumps(result))
        return status
    if args.zmq:
        import zmq

        from sockway.app import ZmqPublisher

        try:
            publisher = ZmqPublisher(args.zmq, push=not args.pub)
        except zmq.ZMQError as exc:
            print(f"sockway publish: bad ZeroMQ address {args.zmq!r} ({exc}); use tcp://HOST:PORT",
                  file=sys.stderr)
            return 2
        kind = "PUB" if args.pub else "PUSH"
        with publisher:
            for line in lines():
                sent: object
                if args.raw:
                    publisher.raw(line)
                    sent = line
                else:
                    for cmd in _commands(args, [line]):
                        if args.pub:  # a publish, as two frames: SUB runs no command
                            sent = [cmd["channel"], json.dumps(cmd["data"])]
                            publisher.socket.send_multipart([frame.encode() for frame in sent])
                        else:
                            publisher.socket.send(json.dumps(cmd).encode())
                            sent = cmd
                # ZeroMQ gives no answer: say what went where instead.
                print(json.dumps({"sent": sent, "to": args.zmq, "socket": kind}), flush=True)
        return 0
    return _run_broker(args, lines())


def _run_broker(args: argparse.Namespace, lines) -> int:
    """Commands through the cluster's broker, each result (or refusal) coming back from
    the node that ran it. The URL is the gateway's ``[broker] url`` as configured: its
    ``prefix`` names the command list (Redis) or subject (NATS)."""
    from urllib.parse import urlsplit, urlunsplit

    from sockway.app import GatewayError

    try:
        name, url, prefix = broker_target(args)
    except ValueError as exc:
        print(f"sockway publish: {exc}", file=sys.stderr)
        return 2
    engine = {"nats": "NATS", "redis": "Redis"}[name]
    bare = urlunsplit(urlsplit(url)._replace(query=""))
    try:
        if args.nats:
            from sockway.app_nats import NatsCommands

            gateway = NatsCommands(bare, prefix=prefix, timeout=5.0)
        else:
            from sockway.app_redis import RedisCommands

            gateway = RedisCommands(bare, prefix=prefix)
    except Exception as exc:  # the client libraries raise several kinds when they cannot connect
        print(f"sockway publish: cannot reach {url}: {str(exc) or type(exc).__name__}", file=sys.stderr)
        return 1
    status = 0
    try:
        for line in lines:
            for cmd in _commands(args, [line]):
                op = cmd.pop("op")
                try:
                    result = gateway.command(op, wait=True, **cmd)
                except GatewayError as exc:
                    print(f"sockway publish: refused: {exc}", file=sys.stderr)
                    status = 1
                except TimeoutError as exc:
                    print(f"sockway publish: {exc} (is a gateway using this {engine}?)", file=sys.stderr)
                    return 1
                except Exception as exc:  # redis.RedisError and the like: the broker is unreachable
                    print(f"sockway publish: cannot reach {url}: {exc}", file=sys.stderr)
                    return 1
                else:
                    print(json.dumps(result))
    finally:
        if args.nats:
            gateway.close()  # its own event loop thread and connection
    return status
