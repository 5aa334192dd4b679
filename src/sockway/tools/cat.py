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
import queue
import sys
import threading
import time

from sockway.client import TRANSPORTS, Closed, connect
from sockway.tools import positive_int, positive_seconds, reader_gone

__all__ = ["add_parser", "run"]

NORMAL = (1000, 1001)


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "cat", help="WebSocket/SockJS shell: send stdin lines, print messages",
        description=__doc__.split("\n\n", 1)[0].replace("``", "") + "\n\n"
                    "URLs: ws://, wss:// are raw WebSocket; http://, https:// are SockJS "
                    "endpoints (choose --transport).\n\n"
                    "Interactive when stdin is a terminal: a '> ' prompt with line editing and\n"
                    "history (~/.sockway_history); messages received are printed as '< message'.\n"
                    "Commands: /close [code] [reason] (close, then exit), /quit (exit).\n"
                    "Pipe mode otherwise: each stdin line is a message, each message received a\n"
                    "stdout line; after stdin ends, it waits --linger seconds, then closes.",
        epilog="examples:\n"
               "  sockway cat ws://127.0.0.1:8080/echo/websocket\n"
               "  sockway cat http://127.0.0.1:8080/chat --transport xhr-streaming\n"
               "  echo hello | sockway cat ws://127.0.0.1:8080/echo/websocket\n"
               "  sockway cat --jsonl --no-input ws://127.0.0.1:8080/chat/websocket > chat.jsonl\n"
               "  sockway cat ws://127.0.0.1:8080/live/websocket --token \"$JWT\"\n\n"
               "exit status: 0 after a normal close (1000, 1001, or closed by us, also at --count\n"
               "or --timeout), 1 if the connection could not be made, 2 for a usage error, 3 if\n"
               "the server closed with another code (printed on stderr).",
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
    p.add_argument("--count", "-n", type=positive_int, help="exit after receiving this many messages")
    p.add_argument("--timeout", type=positive_seconds, help="exit (status 0) after this many seconds")
    p.add_argument("--linger", type=float, default=1.0,
                   help="pipe mode: seconds to keep printing after stdin ends (default 1)")
    p.add_argument("--binary", action="store_true", help="send stdin lines as binary messages")
    return p


class Printer:
    def __init__(self, jsonl: bool, interactive: bool) -> None:
        self.jsonl = jsonl
        self.interactive = interactive
        self.reader: StdinReader | None = None

    def event(self, direction: str, **fields) -> None:
        if self.jsonl:
            record = {"t": round(time.time(), 6), "dir": direction, **fields}
            sys.stdout.write(json.dumps(record, ensure_ascii=False) + "\n")
            sys.stdout.flush()
            return
        if direction == "in":
            data = fields["data"]
            text = f"[binary {len(base64.b64decode(data))} bytes] {data}" if fields.get("binary") else data
            if self.interactive:
                self._above_prompt(sys.stdout, "< " + text)
            else:
                sys.stdout.write(text + "\n")
                sys.stdout.flush()
        elif direction in ("open", "close", "error") and self.interactive:
            detail = " ".join(f"{k}={v!r}" for k, v in fields.items())
            self._above_prompt(sys.stderr, f"* {direction} {detail}", redraw=direction == "open")

    def note(self, text: str) -> None:
        """A line on stderr (on its own line even while the prompt is shown)."""
        self._above_prompt(sys.stderr, text, redraw=False)

    def _above_prompt(self, stream, text: str, redraw: bool = True) -> None:
        """Print a line while input() may be showing the prompt: clear the prompt's
        line, print, then draw the prompt and what was typed so far again."""
        if self.reader is None:
            self._write(stream, text, False, redraw)
            return
        with self.reader.hold_screen():
            self._write(stream, text, self.reader.reading, redraw)

    @staticmethod
    def _write(stream, text: str, prompting: bool, redraw: bool) -> None:
        sys.stdout.flush()
        stream.write(("\r\x1b[K" if prompting else "") + text + "\n")
        stream.flush()
        if prompting and redraw:
            sys.stdout.write("> " + _line_buffer())
            sys.stdout.flush()


def _line_buffer() -> str:
    try:
        import readline
    except ImportError:  # pragma: no cover
        return ""
    return readline.get_line_buffer()


def _headers(items: list[str]) -> dict[str, str]:
    headers = {}
    for item in items:
        name, sep, value = item.partition(":")
        if not sep or not name.strip():
            raise ValueError(f"--header takes 'Name: value', got {item!r}")
        headers[name.strip()] = value.strip()
    return headers


class StdinReader:
    """Lines from stdin, read on request by a daemon thread: a read blocked on a
    terminal or a silent pipe must not keep the process alive after the connection
    ends (a thread of asyncio's default executor would: asyncio.run waits for it).

    At a terminal, messages are printed while readline shows the prompt. ``screen``
    keeps the two apart: readline holds it from just before it draws the prompt (its
    startup hook) until the prompt is on the screen (its pre-input hook), when
    ``reading`` becomes true; a message printed meanwhile waits, then clears the
    prompt's line and draws it again below itself."""

    def __init__(self, loop: asyncio.AbstractEventLoop, prompt: str | None) -> None:
        self.loop = loop
        self.prompt = prompt
        self.reading = False  # the prompt is on the screen, readline waits for keys
        self.stopped = False  # the connection has ended: prompt no more
        self.screen = threading.Lock()
        self._drawing = False  # the reader thread holds ``screen``
        self._requests: queue.SimpleQueue[asyncio.Future] = queue.SimpleQueue()
        threading.Thread(target=self._run, name="sockway-cat-stdin", daemon=True).start()

    async def readline(self) -> str | None:
        """The next line without its newline, or None at the end of input."""
        future = self.loop.create_future()
        self._requests.put(future)
        return await future

    def stop(self) -> None:
        """No prompt after this; one already shown is cleared (we are exiting)."""
        with self.hold_screen():
            self.stopped = True
            if self.reading and self.prompt is not None:
                sys.stdout.write("\r\x1b[K")
                sys.stdout.flush()

    @contextlib.contextmanager
    def hold_screen(self):
        """Around output from the main thread; bounded, should readline never tell
        that the prompt is drawn."""
        held = self.screen.acquire(timeout=0.5)
        try:
            yield
        finally:
            if held:
                self.screen.release()

    def _drawing_prompt(self) -> None:  # readline's startup hook
        if self.screen.acquire(timeout=0.5):
            self._drawing = True

    def _prompted(self) -> None:  # readline's pre-input hook
        self.reading = True
        self._done_drawing()

    def _done_drawing(self) -> None:
        if self._drawing:
            self._drawing = False
            self.screen.release()

    def _run(self) -> None:
        hooked = False
        if self.prompt is not None:
            try:
                import readline

                readline.set_startup_hook(self._drawing_prompt)
                readline.set_pre_input_hook(self._prompted)
                hooked = True
            except (ImportError, AttributeError):
                pass
        while True:
            future = self._requests.get()
            if self.stopped:
                return
            try:
                if self.prompt is not None:
                    self.reading = not hooked  # without the hooks: about to be drawn
                    try:
                        line: str | None = input(self.prompt)
                    finally:
                        self.reading = False
                        self._done_drawing()
                else:
                    line = sys.stdin.readline()
                    line = line[:-1] if line.endswith("\n") else (line or None)
            except EOFError:
                line = None
                if self.prompt is not None:  # Ctrl-D: end the prompt's line
                    sys.stdout.write("\n")
                    sys.stdout.flush()
            except (OSError, ValueError, KeyboardInterrupt):
                line = None
            with contextlib.suppress(RuntimeError):  # the loop is closed: we are exiting
                self.loop.call_soon_threadsafe(_resolve, future, line)
            if line is None:
                return


def _resolve(future: asyncio.Future, value: object) -> None:
    if not future.done():
        future.set_result(value)


def _connect_error(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    if status:
        body = getattr(response, "body", b"") or b""
        text = body.decode("utf-8", "replace").strip()[:200]
        return f"HTTP {status}" + (f": {text}" if text else "")
    return str(exc) or type(exc).__name__


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
        print(f"sockway cat: could not connect to {args.url}: {_connect_error(exc)}", file=sys.stderr)
        return 1
    printer.event("open", url=args.url, transport=conn.transport_name,
                  **({"subprotocol": conn.subprotocol} if conn.subprotocol else {}))
    loop = asyncio.get_running_loop()
    received = 0
    we_closed = False
    status = 0
    reader = None
    if not args.no_input:
        if interactive:
            _setup_readline()
        reader = StdinReader(loop, "> " if interactive else None)
        printer.reader = reader

    async def send_lines() -> None:
        """Until the end of input, /quit or /close."""
        nonlocal we_closed
        assert reader is not None
        while (line := await reader.readline()) is not None:
            if interactive and line.startswith("/"):
                command, *rest = line[1:].split(" ", 2)
                if command in ("quit", "q"):
                    return
                if command == "close":
                    try:
                        code = int(rest[0]) if rest else 1000
                    except ValueError:
                        print("usage: /close [code] [reason]", file=sys.stderr)
                        continue
                    we_closed = True
                    await conn.close(code, rest[1] if len(rest) > 1 else "")
                    return
                print("commands: /close [code] [reason], /quit", file=sys.stderr)
                continue
            if interactive and not line:
                continue
            if args.jsonl:  # before sending: an answer may arrive before send() returns
                printer.event("out", data=line, **({"binary": True} if args.binary else {}))
            try:
                await conn.send(line.encode() if args.binary else line)
            except Exception as exc:
                if conn.close_code is None:
                    print(f"sockway cat: could not send: {exc}", file=sys.stderr)
                return

    sender = loop.create_task(send_lines()) if reader is not None else None
    deadline = loop.time() + args.timeout if args.timeout else None
    receiving: asyncio.Task | None = None
    try:
        while True:
            wait = None
            if sender is not None and sender.done():
                if interactive and not we_closed:
                    break  # /quit or the end of input (Ctrl-D)
                wait = args.linger  # pipe mode after the end of input (or after /close)
            if deadline is not None:
                left = deadline - loop.time()
                if left <= 0:
                    break
                wait = left if wait is None else min(wait, left)
            if receiving is None:
                receiving = loop.create_task(conn.recv())
            waiting = {receiving} if sender is None or sender.done() else {receiving, sender}
            done, _ = await asyncio.wait(waiting, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
            if receiving not in done:
                if not done:
                    break  # --timeout, or --linger after the end of input
                continue  # input ended: from now on, linger
            task, receiving = receiving, None
            try:
                message = task.result()
            except Closed as closed:
                printer.event("close", code=closed.code, reason=closed.reason)
                if not we_closed and closed.code not in NORMAL:
                    printer.note(f"sockway cat: closed by the server: {closed.code} {closed.reason}")
                    status = 3
                break
            if isinstance(message, bytes):
                printer.event("in", data=base64.b64encode(message).decode(), binary=True)
            else:
                printer.event("in", data=message)
            received += 1
            if args.count is not None and received >= args.count:
                break
    finally:
        if reader is not None:
            reader.stop()
        for task in (sender, receiving):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if conn.close_code is None:
            await conn.close()
            printer.event("close", code=1000, reason="", by="client")
        else:
            await conn.close()  # closed by the server: release the client's resources
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


def _terminal_state():
    """The terminal's settings, to restore at exit: readline changes them while it
    reads a line, and we may exit (the server closed) in the middle of one."""
    try:
        import termios

        return termios.tcgetattr(sys.stdin.fileno())
    except Exception:
        return None


def run(args: argparse.Namespace) -> int:
    saved = _terminal_state() if sys.stdin.isatty() else None
    try:
        return asyncio.run(_main(args))
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:
        return reader_gone()
    finally:
        if saved is not None:
            import termios

            with contextlib.suppress(Exception):
                termios.tcsetattr(sys.stdin.fileno(), termios.TCSADRAIN, saved)
