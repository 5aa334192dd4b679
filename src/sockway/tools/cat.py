"""``sockway cat URL``: a WebSocket and SockJS shell (what wssh and websocat are).

* Interactive when stdin is a terminal: a ``> `` prompt with line editing and history
  (saved in ~/.sockway_history); incoming messages are printed as ``< message``.
  Lines starting with ``/`` are commands: ``/close [code] [reason]``, ``/quit``.
* Pipe mode otherwise: each stdin line is a message, each incoming message a stdout
  line. After stdin ends, it waits ``--linger`` seconds for more messages, then closes.
* ``--jsonl``: one JSON object per event on stdout, with time and direction::

      {"t": 1764130000.123, "dir": "in", "data": "hello"}

Exit status: 0 after a normal close (1000 or 1001, or closed by us), 1 if the connection
could not be made, 2 for a usage error, 3 if the server closed with another code (its
code and reason are printed on stderr).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import sys
import time

from sockway.client import TRANSPORTS, Closed, connect

__all__ = ["add_parser", "run"]

NORMAL = (1000, 1001)


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "cat", help="WebSocket/SockJS shell: send stdin lines, print messages",
        description=__doc__.split("\n\n", 1)[0] + "\n\nURLs: ws://, wss:// are raw WebSocket; "
                    "http://, https:// are SockJS endpoints (choose --transport).",
        epilog="examples:\n"
               "  sockway cat ws://127.0.0.1:8080/echo/websocket\n"
               "  sockway cat http://127.0.0.1:8080/chat --transport xhr-streaming\n"
               "  echo hello | sockway cat ws://127.0.0.1:8080/echo/websocket\n"
               "  sockway cat --jsonl --no-input ws://127.0.0.1:8080/chat/websocket > chat.jsonl\n"
               "  sockway cat ws://127.0.0.1:8080/live/websocket --token \"$JWT\"",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("url", help="ws://host/prefix/websocket or http://host/prefix (SockJS)")
    p.add_argument("--transport", "-t", default="websocket", choices=TRANSPORTS,
                   help="SockJS transport for http(s) URLs (default websocket)")
    p.add_argument("--header", "-H", action="append", default=[], metavar="'NAME: VALUE'",
                   help="extra request header (repeatable)")
    p.add_argument("--origin", help="Origin header to send")
    p.add_argument("--subprotocol", "-s", action="append", default=None,
                   help="WebSocket subprotocol to offer (repeatable)")
    p.add_argument("--token", help="JWT appended to the URL as ?token=")
    p.add_argument("--jsonl", action="store_true", help="JSON lines with timestamps and directions")
    p.add_argument("--no-input", action="store_true", help="do not read stdin; just print messages")
    p.add_argument("--count", "-n", type=int, help="exit after receiving this many messages")
    p.add_argument("--timeout", type=float, help="exit (status 0) after this many seconds")
    p.add_argument("--linger", type=float, default=1.0,
                   help="pipe mode: seconds to keep printing after stdin ends (default 1)")
    p.add_argument("--binary", action="store_true", help="send stdin lines as binary messages")
    return p


class Printer:
    def __init__(self, jsonl: bool, interactive: bool) -> None:
        self.jsonl = jsonl
        self.interactive = interactive

    def event(self, direction: str, **fields) -> None:
        if self.jsonl:
            record = {"t": round(time.time(), 6), "dir": direction, **fields}
            sys.stdout.write(json.dumps(record, ensure_ascii=False) + "\n")
            sys.stdout.flush()
            return
        if direction == "in":
            data = fields["data"]
            text = f"[binary {len(base64.b64decode(data))} bytes] {data}" if fields.get("binary") else data
            sys.stdout.write(("< " if self.interactive else "") + text + "\n")
            sys.stdout.flush()
        elif direction in ("open", "close", "error") and self.interactive:
            detail = " ".join(f"{k}={v!r}" for k, v in fields.items())
            print(f"* {direction} {detail}", file=sys.stderr)


def _headers(items: list[str]) -> dict[str, str]:
    headers = {}
    for item in items:
        name, sep, value = item.partition(":")
        if not sep or not name.strip():
            raise SystemExit(f"sockway cat: --header takes 'Name: value', got {item!r}")
        headers[name.strip()] = value.strip()
    return headers


async def _main(args: argparse.Namespace) -> int:
    interactive = not args.no_input and sys.stdin.isatty() and not args.jsonl
    printer = Printer(args.jsonl, interactive)
    try:
        conn = connect(args.url, transport=args.transport, headers=_headers(args.header),
                       origin=args.origin, subprotocols=args.subprotocol, token=args.token)
    except ValueError as exc:
        print(f"sockway cat: {exc}", file=sys.stderr)
        return 2
    try:
        await conn.open()
    except Exception as exc:  # every way a connection can fail, told plainly
        detail = getattr(getattr(exc, "response", None), "status_code", None)
        reason = f"HTTP {detail}" if detail else str(exc) or type(exc).__name__
        print(f"sockway cat: could not connect to {args.url}: {reason}", file=sys.stderr)
        return 1
    printer.event("open", url=args.url, transport=conn.transport_name,
                  **({"subprotocol": conn.subprotocol} if conn.subprotocol else {}))
    received = 0
    we_closed = False
    stdin_done = asyncio.Event()
    loop = asyncio.get_running_loop()

    async def send_lines() -> None:
        nonlocal we_closed
        if args.no_input:
            return
        if interactive:
            _setup_readline()
        while True:
            try:
                if interactive:
                    line = await asyncio.to_thread(input, "> ")
                else:
                    line = await loop.run_in_executor(None, sys.stdin.readline)
                    if not line:
                        break
                    line = line.rstrip("\n")
            except EOFError:
                break
            if interactive and line.startswith("/"):
                command, *rest = line[1:].split(" ", 2)
                if command in ("quit", "q"):
                    break
                if command == "close":
                    code = int(rest[0]) if rest else 1000
                    we_closed = True
                    await conn.close(code, rest[1] if len(rest) > 1 else "")
                    return
                print("commands: /close [code] [reason], /quit", file=sys.stderr)
                continue
            message = line.encode() if args.binary else line
            await conn.send(message)
            if args.jsonl:
                printer.event("out", data=line)
        stdin_done.set()

    sender = loop.create_task(send_lines())
    deadline = loop.time() + args.timeout if args.timeout else None
    status = 0
    try:
        while True:
            wait = None
            if stdin_done.is_set() and not interactive:
                wait = args.linger
            if deadline is not None:
                left = deadline - loop.time()
                if left <= 0:
                    break
                wait = left if wait is None else min(wait, left)
            try:
                message = await conn.recv(timeout=wait)
            except TimeoutError:
                if stdin_done.is_set() or (deadline is not None and loop.time() >= deadline):
                    break
                continue
            except Closed as closed:
                printer.event("close", code=closed.code, reason=closed.reason)
                if not we_closed and closed.code not in NORMAL:
                    print(f"sockway cat: closed by the server: {closed.code} {closed.reason}",
                          file=sys.stderr)
                    status = 3
                break
            if isinstance(message, bytes):
                printer.event("in", data=base64.b64encode(message).decode(), binary=True)
            else:
                printer.event("in", data=message)
            received += 1
            if args.count is not None and received >= args.count:
                break
            if sender.done() and not stdin_done.is_set() and not args.no_input:
                break  # /quit or /close in interactive mode
    finally:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await sender
        if conn.close_code is None:
            we_closed = True
            await conn.close()
            printer.event("close", code=1000, reason="", by="client")
    return status


def _setup_readline() -> None:
    try:
        import atexit
        import readline
    except ImportError:  # pragma: no cover
        return
    path = os.path.expanduser("~/.sockway_history")
    with contextlib.suppress(OSError):
        readline.read_history_file(path)
    readline.set_history_length(1000)

    def save() -> None:
        with contextlib.suppress(OSError):
            readline.write_history_file(path)

    atexit.register(save)


def run(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_main(args))
    except KeyboardInterrupt:
        return 0
