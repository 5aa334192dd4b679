"""``sockway tail``: watch application events or a channel's messages.

    sockway tail events --url http://127.0.0.1:8080 --key K   # as the gateway emits them
    sockway tail events --zmq tcp://127.0.0.1:5556            # PULL from [zeromq] push
    sockway tail channel news --url ws://127.0.0.1:8080/live/websocket
    sockway tail channel news --url http://127.0.0.1:8080/live --transport xhr-streaming
    sockway tail channel news --url ... --since 41:9f2c01ab    # what was missed first

Output: one JSON object per line. Stops after ``--count`` items or ``--timeout`` seconds
of silence. ``--url`` watches the gateway's admin stream: it sees every event and takes
none from the application. A PULL socket (``--zmq``) shares events with the
application's workers (each event goes to one of them), so tail events from a ZeroMQ
PUSH only when no worker runs.
Exit status: 0, 1 if the gateway cannot be reached or refuses, 2 for a usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys

from sockway.client.sockjs import TRANSPORTS
from sockway.tools import reader_gone

__all__ = ["add_parser", "run"]


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("tail", help="print application events or a channel's messages",
                       description=__doc__.split("\n\n")[0].replace("``", ""),
                       epilog="examples:\n" + "\n\n".join(__doc__.split("\n\n")[1:]).replace("``", ""),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["events", "channel"],
                   help="events: application events of the gateway; channel: one channel's messages")
    p.add_argument("name", nargs="?", help="channel name (tail channel)")
    p.add_argument("--zmq", metavar="ADDRESS", help="events: the gateway's PUSH address")
    p.add_argument("--key", default=os.environ.get("SOCKWAY_API_KEY"),
                   help="events --url: the API key (or SOCKWAY_API_KEY)")
    p.add_argument("--endpoint", help="events --url: only this endpoint")
    p.add_argument("--type", help="events --url: only these types, comma-separated (open,message,close)")
    p.add_argument("--url", help="events: the gateway (http://host:port); channel: a channels-mode endpoint "
                   "(ws://.../websocket or http://... SockJS)")
    p.add_argument("--transport", default="websocket", choices=TRANSPORTS,
                   help="channel: SockJS transport for http URLs (default websocket)")
    p.add_argument("--token", help="JWT for the channels endpoint")
    p.add_argument("--since", metavar="OFFSET:EPOCH", help="channel: recover from this position first")
    p.add_argument("--count", "-n", type=int, help="stop after this many items")
    p.add_argument("--timeout", type=float, help="stop after this many seconds without an item")
    return p


def _out(item) -> None:
    sys.stdout.write(json.dumps(item, ensure_ascii=False) + "\n")
    sys.stdout.flush()


async def _tail_admin_events(args: argparse.Namespace) -> int:
    import aiohttp

    if not args.key:
        print("sockway tail events --url: give --key (or SOCKWAY_API_KEY)", file=sys.stderr)
        return 2
    query = "&".join(f"{k}={v}" for k, v in (("endpoint", args.endpoint), ("type", args.type)) if v)
    url = args.url.rstrip("/").replace("http", "ws", 1) + "/admin/api/events" + (f"?{query}" if query else "")
    count = 0
    async with aiohttp.ClientSession(headers={"X-API-Key": args.key}) as session:
        try:
            ws = await session.ws_connect(url, heartbeat=30)
        except aiohttp.WSServerHandshakeError as exc:
            reason = await _refusal(session, url.replace("ws", "http", 1))
            print(f"sockway tail: the gateway refused: HTTP {exc.status}{reason}", file=sys.stderr)
            return 1
        except aiohttp.ClientError as exc:
            print(f"sockway tail: cannot reach {args.url}: {exc}", file=sys.stderr)
            return 1
        async with ws:
            while args.count is None or count < args.count:
                try:
                    message = await ws.receive(timeout=args.timeout)
                except TimeoutError:
                    break
                if message.type != aiohttp.WSMsgType.TEXT:
                    break
                for event in json.loads(message.data).get("items", []):
                    _out(event)
                    count += 1
                    if args.count is not None and count >= args.count:
                        break
    return 0


async def _refusal(session, url: str) -> str:
    """The gateway's own words for refusing ``url`` (its JSON error message), if any."""
    import aiohttp

    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=5)) as response:
            body = await response.json(content_type=None)
        return f": {body['error']['message']}"
    except Exception:
        return ""


def _zmq_socket(kind: int, address: str):
    import zmq

    sock = zmq.Context.instance().socket(kind)
    try:
        sock.connect(address)
    except zmq.ZMQError as exc:
        sock.close(linger=0)
        raise ValueError(f"bad ZeroMQ address {address!r} ({exc}); use tcp://HOST:PORT") from None
    return sock


def _tail_events(args: argparse.Namespace) -> int:
    if args.url:
        return asyncio.run(_tail_admin_events(args))
    if not args.zmq:
        print("sockway tail events: give --url (the gateway, with --key) or --zmq ADDRESS "
              "(the gateway's [zeromq] push)", file=sys.stderr)
        return 2
    import zmq

    try:
        sock = _zmq_socket(zmq.PULL, args.zmq)
    except ValueError as exc:
        print(f"sockway tail: {exc}", file=sys.stderr)
        return 2
    count = 0
    try:
        while args.count is None or count < args.count:
            if args.timeout is not None and not sock.poll(int(args.timeout * 1000)):
                break
            _out(json.loads(sock.recv()))
            count += 1
    finally:
        sock.close(linger=0)
    return 0


async def _tail_channel(args: argparse.Namespace) -> int:
    from sockway.client import Closed, connect

    if not args.name or not args.url:
        print("sockway tail channel: give NAME and --url of a channels-mode endpoint", file=sys.stderr)
        return 2
    subscribe: dict = {"op": "subscribe", "channel": args.name, "id": 1}
    if args.since:
        offset, _, epoch = args.since.partition(":")
        try:
            subscribe["since"] = {"offset": int(offset), "epoch": epoch}
        except ValueError:
            print("sockway tail channel: --since takes OFFSET:EPOCH, like 41:9f2c01ab", file=sys.stderr)
            return 2
    try:
        conn = await connect(args.url, transport=args.transport, token=args.token).open()
    except Exception as exc:
        print(f"sockway tail: could not connect to {args.url}: {exc}", file=sys.stderr)
        return 1
    count = 0
    try:
        await conn.send(json.dumps(subscribe))
        while args.count is None or count < args.count:
            try:
                raw = await conn.recv(timeout=args.timeout)
            except TimeoutError:
                break
            except Closed as closed:
                print(f"sockway tail: closed {closed.code} {closed.reason}", file=sys.stderr)
                return 1 if closed.code not in (1000, 1001) else 0
            try:
                frame = json.loads(raw)
                kind = frame.get("type")
            except (ValueError, TypeError, AttributeError):
                frame, kind = None, None
            if kind is None:
                print(f"sockway tail: {args.url} does not speak the channels protocol (it sent "
                      f"{str(raw)[:80]!r}); give a channels-mode endpoint", file=sys.stderr)
                return 1
            if kind == "reply" and frame.get("id") == 1:
                if "error" in frame:
                    print(f"sockway tail: subscribe refused: {frame['error']['message']}", file=sys.stderr)
                    return 1
                result = frame["result"]
                publications = result.get("publications", [])
                if args.since and not result.get("recovered"):
                    print("sockway tail: history does not cover the gap since "
                          f"{args.since}; showing live messages only", file=sys.stderr)
                    publications = []  # a partial history would hide the gap
                for pub in publications:
                    if args.count is not None and count >= args.count:
                        break
                    _out({"type": "message", "channel": args.name, "epoch": result["epoch"], **pub,
                          "recovered": True})
                    count += 1
            elif kind in ("message", "join", "leave"):
                _out(frame)
                count += 1
    finally:
        await conn.close()
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        if args.what == "events":
            return _tail_events(args)
        return asyncio.run(_tail_channel(args))
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:
        return reader_gone()
