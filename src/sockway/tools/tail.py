"""``sockway tail``: watch application events or a channel's messages.

    sockway tail events --url http://127.0.0.1:8080 --key K   # as the gateway emits them
    sockway tail events --zmq tcp://127.0.0.1:5556            # PULL from [zeromq] push
    sockway tail channel news --url ws://127.0.0.1:8080/live/websocket
    sockway tail channel news --url http://127.0.0.1:8080/live --transport xhr-streaming
    sockway tail channel news --url ... --since 41:9f2c01ab    # what was missed first
    sockway tail events --redis redis://127.0.0.1:6379/0       # a cluster's event stream
    sockway tail channel news --nats nats://127.0.0.1:4222     # a channel, from the broker

Output: one JSON object per line; first, on stderr, which endpoints emit events (those
in channels or app mode: echo and broadcast endpoints emit none). Stops after ``--count``
items or ``--timeout`` seconds of silence. ``--url`` watches the gateway's admin stream: it sees every event and takes
none from the application. A PULL socket (``--zmq``) shares events with the
application's workers (each event goes to one of them), so tail events from a ZeroMQ
PUSH only when no worker runs. ``--redis`` and ``--nats`` take the cluster's ``[broker]
url`` (its ``?prefix=`` included) and watch without taking anything: events as the
nodes add them to the Redis stream (XREAD, no consumer group) or publish them on the
NATS subject, and a channel's publications, joins and leaves from every node.
Exit status: 0, 1 if the gateway or broker cannot be reached or refuses, 2 for a usage
error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys

from sockway.client.sockjs import TRANSPORTS
from sockway.tools import broker_target, positive_int, positive_seconds, reader_gone

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
    p.add_argument("--redis", metavar="URL", help="the Redis broker URL of a cluster ([broker] url)")
    p.add_argument("--nats", metavar="URL", help="the NATS broker URL of a cluster ([broker] url)")
    p.add_argument("--transport", default="websocket", choices=TRANSPORTS,
                   help="channel: SockJS transport for http URLs (default websocket)")
    p.add_argument("--token", help="JWT for the channels endpoint")
    p.add_argument("--since", metavar="OFFSET:EPOCH", help="channel: recover from this position first")
    p.add_argument("--count", "-n", type=positive_int, help="stop after this many items")
    p.add_argument("--timeout", type=positive_seconds, help="stop after this many seconds without an item")
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
            print(f"sockway tail: watching events of {args.url}; "
                  f"{await _emitters(session, args.url.rstrip('/') + '/admin/api/stats')}",
                  file=sys.stderr, flush=True)
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


EMITTING_MODES = ("channels", "app")
"""The endpoint modes whose connections emit application events (docs/bridge.md)."""


async def _emitters(session, stats_url: str) -> str:
    """Which of the gateway's endpoints emit events, from its admin stats: a user who
    watches an echo or broadcast endpoint would otherwise wait for nothing."""
    import aiohttp

    general = "only channels- and app-mode endpoints emit events"
    try:
        async with session.get(stats_url, timeout=aiohttp.ClientTimeout(total=5)) as response:
            endpoints = (await response.json(content_type=None))["result"]["endpoints"]
        modes = {prefix: entry["mode"] for prefix, entry in endpoints.items()}
    except Exception:  # an older gateway, or one answering something else: say the rule only
        return general
    emitting = [f"{prefix} ({mode})" for prefix, mode in modes.items() if mode in EMITTING_MODES]
    silent = [f"{prefix} ({mode})" for prefix, mode in modes.items() if mode not in EMITTING_MODES]
    if not emitting:
        return f"none of its endpoints emits events ({general}: {', '.join(silent)} do not)"
    said = f"events come from {', '.join(emitting)}"
    return said + (f"; {', '.join(silent)} emit none" if silent else "")


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
        print("sockway tail events: give --url (the gateway, with --key), --zmq ADDRESS "
              "(the gateway's [zeromq] push), or --redis/--nats URL (the cluster's broker)", file=sys.stderr)
        return 2
    import zmq

    try:
        sock = _zmq_socket(zmq.PULL, args.zmq)
    except ValueError as exc:
        print(f"sockway tail: {exc}", file=sys.stderr)
        return 2
    print(f"sockway tail: pulling events from {args.zmq} (only channels- and app-mode endpoints emit them)",
          file=sys.stderr, flush=True)
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
        print("sockway tail channel: give NAME and --url of a channels-mode endpoint "
              "(or --redis/--nats URL of the cluster's broker)", file=sys.stderr)
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


# -- through the cluster's broker ---------------------------------------------------------


async def _wait_items(queue: asyncio.Queue, args: argparse.Namespace) -> None:
    count = 0
    while args.count is None or count < args.count:
        try:
            item = await asyncio.wait_for(queue.get(), args.timeout)
        except TimeoutError:
            return
        _out(item)
        count += 1


async def _tail_broker_channel(args: argparse.Namespace, engine: str, url: str) -> int:
    """A passive node of the cluster (no commands, no sessions, no events) that only
    listens to the channel: what every node delivers, gaps filled as on a node."""
    import base64

    from sockway.brokers import create_broker

    if args.since:
        print("sockway tail channel: --since needs --url (recovery is asked of a gateway, which knows the "
              "channel's history size)", file=sys.stderr)
        return 2
    broker = create_broker(url + ("&" if "?" in url else "?") + "commands=off&sessions=off&events=off")
    queue: asyncio.Queue = asyncio.Queue()

    def on_publication(pub) -> None:
        if pub.channel != args.name:
            return
        item = {"type": "message", "channel": pub.channel, "offset": pub.offset, "epoch": pub.epoch}
        if isinstance(pub.data, (bytes, bytearray)):
            item["binary"] = base64.b64encode(pub.data).decode()
        else:
            item["data"] = pub.data.value
        if pub.info:
            item["info"] = pub.info
        queue.put_nowait(item)

    def on_presence(channel: str, conn: str, info: dict | None) -> None:
        if channel == args.name:
            item = {"type": "join" if info is not None else "leave", "channel": channel, "conn": conn}
            if info is not None:
                item["info"] = info
            queue.put_nowait(item)

    broker.on_publication = on_publication
    broker.on_presence = on_presence
    await broker.start()
    try:
        if not broker.ready:
            print(f"sockway tail: cannot reach {engine} at {url}", file=sys.stderr)
            return 1
        from sockway.brokers.base import resolve

        await resolve(broker.interest(args.name, True))
        if not await broker.subscribed(args.name):
            print(f"sockway tail: {engine} did not confirm the subscription", file=sys.stderr)
            return 1
        print(f"sockway tail: watching channel {args.name} through {engine}", file=sys.stderr, flush=True)
        await _wait_items(queue, args)
    finally:
        await broker.stop()
    return 0


async def _tail_broker_events(args: argparse.Namespace, engine: str, url: str, prefix: str) -> int:
    """Events as the nodes write them: Redis XREAD from the newest entry on (no consumer
    group: the workers' group keeps every event), NATS a core subscription to the
    subject the event stream captures (the workers' durable consumer is untouched)."""
    from sockway.jsonutil import loads

    queue: asyncio.Queue = asyncio.Queue()
    if engine == "nats":
        import nats

        from sockway.app_nats import quiet_errors
        from sockway.brokers.nats import NETWORK_ERRORS
        from sockway.brokers.urls import nats_servers

        try:
            nc = await asyncio.wait_for(nats.connect(nats_servers(url), connect_timeout=2, error_cb=quiet_errors,
                                                     max_reconnect_attempts=2), 10)
        except (*NETWORK_ERRORS, nats.errors.NoServersError) as exc:
            print(f"sockway tail: cannot reach NATS at {url}: {exc or type(exc).__name__}", file=sys.stderr)
            return 1

        async def on_message(msg) -> None:
            queue.put_nowait(loads(msg.data))

        try:
            await nc.subscribe(f"{prefix}.events", cb=on_message)
            await nc.flush()
            print(f"sockway tail: watching events on NATS subject {prefix}.events", file=sys.stderr, flush=True)
            await _wait_items(queue, args)
        finally:
            await nc.close()
        return 0

    import redis.asyncio as aioredis
    from redis.exceptions import RedisError

    from sockway.brokers.redis import events_key
    from sockway.brokers.urls import split_options

    bare, options = split_options(url)
    key = events_key(options) or f"{prefix}:events"  # where the nodes write when events are on
    client = aioredis.from_url(bare, socket_connect_timeout=2)

    async def read() -> None:
        last = "$"
        while True:
            answer = await client.xread({key: last}, block=1000, count=500)
            for _key, entries in answer or ():
                for entry_id, fields in entries:
                    last = entry_id
                    queue.put_nowait(loads(fields[b"e"]))

    try:
        try:
            await client.ping()
        except (RedisError, OSError) as exc:
            print(f"sockway tail: cannot reach Redis at {url}: {exc}", file=sys.stderr)
            return 1
        print(f"sockway tail: watching events in the Redis stream {key}", file=sys.stderr, flush=True)
        reader = asyncio.get_running_loop().create_task(read())
        waiter = asyncio.get_running_loop().create_task(_wait_items(queue, args))
        await asyncio.wait([reader, waiter], return_when=asyncio.FIRST_COMPLETED)
        for task in (reader, waiter):
            task.cancel()
        if reader.done() and not reader.cancelled() and reader.exception() is not None:
            print(f"sockway tail: Redis: {reader.exception()}", file=sys.stderr)
            return 1
    finally:
        await client.aclose()
    return 0


def _tail_broker(args: argparse.Namespace) -> int:
    if sum(bool(getattr(args, name)) for name in ("url", "zmq", "redis", "nats")) > 1:
        print("sockway tail: give one of --url, --zmq, --redis, --nats", file=sys.stderr)
        return 2
    try:
        engine, url, prefix = broker_target(args)
    except ValueError as exc:
        print(f"sockway tail: {exc}", file=sys.stderr)
        return 2
    if args.what == "channel":
        if not args.name:
            print("sockway tail channel: give the channel NAME", file=sys.stderr)
            return 2
        return asyncio.run(_tail_broker_channel(args, engine, url))
    return asyncio.run(_tail_broker_events(args, engine, url, prefix))


def run(args: argparse.Namespace) -> int:
    try:
        if args.redis or args.nats:
            return _tail_broker(args)
        if args.what == "events":
            return _tail_events(args)
        return asyncio.run(_tail_channel(args))
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:
        return reader_gone()
