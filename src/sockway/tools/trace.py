"""``sockway trace``: a live, decoded trace of the frames in and out of a running gateway
(what ngrep was to the talk, but it understands WebSocket and SockJS framing).

    sockway trace --url http://127.0.0.1:8080 --key K
    sockway trace --endpoint /chat --match 'hello|bye'
    sockway trace --conn 3f9a1c2e.1b --jsonl > conn.jsonl
    sockway trace --channel news --user alice

Each line: time, direction (``<`` from the client, ``>`` to it, ``*`` a channel
publication), connection, transport, the frame kind (ws-text, ws-ping, sockjs, ...),
its size, and the decoded payload. ``--jsonl`` prints the records as JSON. The gateway
keeps at most 10,000 records per watcher in flight; if the terminal cannot keep up,
records are dropped there and the count is shown.

Exit status: 0 on Ctrl-C or after --count/--timeout, 1 if the gateway cannot be reached,
refuses the key or the filter, or ends the trace (it stopped), 2 for a usage error (no
key, a regular expression Python cannot compile).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import time
from urllib.parse import urlencode

from sockway.tools import positive_int, positive_seconds, reader_gone

__all__ = ["add_parser", "run"]

ARROWS = {"in": "<", "out": ">", "publish": "*"}


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("trace", help="live decoded frames of a running gateway",
                       description=__doc__.split("\n\n")[0],
                       epilog="\n\n".join(__doc__.split("\n\n")[1:]),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default=os.environ.get("SOCKWAY_URL", "http://127.0.0.1:8080"),
                   help="the gateway (default http://127.0.0.1:8080 or SOCKWAY_URL)")
    p.add_argument("--key", default=os.environ.get("SOCKWAY_API_KEY"), help="API key (or SOCKWAY_API_KEY)")
    p.add_argument("--endpoint", help="only this endpoint prefix")
    p.add_argument("--conn", help="only this connection id")
    p.add_argument("--user", help="only connections of this user")
    p.add_argument("--channel", help="only this channel's publications and its subscribers' frames")
    p.add_argument("--match", "-e", help="only payloads matching this regular expression")
    p.add_argument("--jsonl", action="store_true", help="JSON lines")
    p.add_argument("--count", "-n", type=positive_int, help="stop after this many records")
    p.add_argument("--timeout", type=positive_seconds, help="stop after this many seconds without a record")
    return p


def format_record(record: dict) -> str:
    stamp = time.strftime("%H:%M:%S", time.localtime(record["t"])) + f".{int(record['t'] * 1000) % 1000:03d}"
    arrow = ARROWS.get(record["dir"], "?")
    who = record.get("conn") or record.get("channel", "")
    where = f"{record.get('endpoint', '')} {record.get('transport', '')}".strip()
    details = [record["kind"], f"{record['size']}B"]
    if record.get("compressed"):
        details.append("deflate")
    if "sockjs" in record:
        details.append(f"sockjs={record['sockjs']}")
    if "messages" in record:
        details.append(f"messages={record['messages']}")
    if "code" in record:
        details.append(f"code={record['code']}")
    if record.get("fin") is False:
        details.append("fin=0")
    if "offset" in record:
        details.append(f"#{record['offset']}")
    if record.get("user"):
        details.append(f"user={record['user']}")
    head = " ".join(part for part in (stamp, arrow, who, where, f"[{' '.join(details)}]") if part)
    return f"{head} {record['data']}"


async def _refusal(session, url: str, exc) -> str:
    """Why the gateway refused the trace: its JSON error message, fetched again with a
    plain GET (the handshake error carries only the status)."""
    import aiohttp

    detail = exc.message
    try:
        async with session.get(url.replace("ws", "http", 1), timeout=aiohttp.ClientTimeout(total=5)) as r:
            body = await r.json(content_type=None)
            detail = f"{body['error']['code']}: {body['error']['message']}"
    except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError):
        pass
    return f"HTTP {exc.status} {detail}"


async def _main(args: argparse.Namespace) -> int:
    import aiohttp

    if not args.key:
        print("sockway trace: the admin API needs --key (or SOCKWAY_API_KEY)", file=sys.stderr)
        return 2
    if args.match:
        try:
            re.compile(args.match)
        except re.error as exc:
            print(f"sockway trace: invalid regular expression {args.match!r}: {exc}", file=sys.stderr)
            return 2
    query = {k: v for k, v in (("endpoint", args.endpoint), ("conn", args.conn), ("user", args.user),
                               ("channel", args.channel), ("match", args.match)) if v}
    url = args.url.rstrip("/").replace("http", "ws", 1) + "/admin/api/trace?" + urlencode(query)
    count = 0
    async with aiohttp.ClientSession(headers={"X-API-Key": args.key}) as session:
        try:
            ws = await session.ws_connect(url, heartbeat=30, max_msg_size=0)
        except aiohttp.WSServerHandshakeError as exc:
            print(f"sockway trace: the gateway refused: {await _refusal(session, url, exc)}", file=sys.stderr)
            return 1
        except (aiohttp.ClientError, OSError) as exc:
            print(f"sockway trace: cannot reach {args.url}: {exc}", file=sys.stderr)
            return 1
        dropped = 0
        async with ws:
            while args.count is None or count < args.count:
                try:
                    message = await ws.receive(timeout=args.timeout)
                except TimeoutError:
                    break
                if message.type != aiohttp.WSMsgType.TEXT:
                    why = ws.exception() or (f"close code {ws.close_code}" if ws.close_code else "connection lost")
                    print(f"sockway trace: the gateway ended the trace ({why})", file=sys.stderr)
                    return 1
                frame = json.loads(message.data)
                if frame.get("type") == "trace":
                    if not args.jsonl:
                        print(f"* tracing {args.url} {frame.get('filter') or '(everything)'}", file=sys.stderr)
                    continue
                if frame.get("dropped", 0) > dropped:
                    print(f"* {frame['dropped'] - dropped} record(s) dropped: this terminal is too slow",
                          file=sys.stderr)
                    dropped = frame["dropped"]
                for record in frame.get("items", []):
                    print(json.dumps(record, ensure_ascii=False) if args.jsonl else format_record(record),
                          flush=True)
                    count += 1
                    if args.count is not None and count >= args.count:
                        break
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_main(args))
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:  # piped into head(1) or a pager that quit
        return reader_gone()
