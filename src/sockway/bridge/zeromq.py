"""The talk's ZeroMQ pattern (docs/bridge.md, "ZeroMQ").

* A bound **SUB** socket (``[zeromq] sub``, e.g. tcp://127.0.0.1:5555) that any program
  PUB-connects to and publishes *data* into: it never runs a command.
* A bound **PULL** socket (``[zeromq] pull``) for programs that PUSH-connect instead: the
  one way in for *commands*, and data as on SUB.
* A bound **PUSH** socket (``[zeromq] push``, e.g. tcp://127.0.0.1:5556) from which any
  number of worker processes PULL application events (one JSON object per message).

Wire format of what comes in, one ZeroMQ message each:

* one frame: a message, delivered *byte for byte* to ``[zeromq] default``
  (``channel:<name>`` or ``endpoint:<prefix>``), whatever it looks like: JSON text is
  not parsed and re-encoded, ``{"op": "stats"}`` is not run. Valid UTF-8 is published
  as that text (a text frame of exactly those bytes to a raw WebSocket client, the same
  string to a SockJS one); anything else as binary data (a binary frame to a raw
  WebSocket client; SockJS, text only, gets it as UTF-8 with U+FFFD for what is not);
* on PULL only, one frame holding a JSON command object (``{"op": ...}``) or a
  non-empty JSON array of them is run instead;
* two frames ``[channel, data]``: publish ``data`` (JSON if it parses, else the string)
  to ``channel``, like a topic-prefixed PUB/SUB message.

A PUB socket drops what it sends before its connection (and the gateway's subscription)
is up: ZeroMQ's "slow joiner". A script that connects and sends at once should PUSH to
the PULL socket, which queues until connected, or wait ~100 ms after connecting.
Nothing comes back on these sockets; commands that need an answer go over HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from typing import TYPE_CHECKING

import zmq
import zmq.asyncio

from sockway.bridge.commands import CommandError, message_data
from sockway.jsonutil import loads
from sockway.ratelog import RateLimitedLog

if TYPE_CHECKING:
    from sockway.bridge.events import EventQueue
    from sockway.config import ZmqConfig
    from sockway.hub.hub import Hub

__all__ = ["ZmqBridge"]

log = logging.getLogger("sockway.zeromq")
complaints = RateLimitedLog(log)


class ZmqBridge:
    def __init__(self, hub: Hub, config: ZmqConfig) -> None:
        self.hub = hub
        self.config = config
        self.context = zmq.asyncio.Context()
        self.sockets: list[zmq.asyncio.Socket] = []
        self.tasks: list[asyncio.Task] = []
        self.received = 0
        self.errors = 0
        self.unrouted = 0
        self.queue: EventQueue | None = None
        if config.push:
            self.queue = hub.events.add_queue("zeromq")

    def _bind(self, kind: int, address: str) -> zmq.asyncio.Socket:
        sock = self.context.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM if kind in (zmq.SUB, zmq.PULL) else zmq.SNDHWM, self.config.hwm)
        try:
            sock.bind(address)
        except zmq.ZMQError as exc:
            sock.close()
            raise OSError(f"cannot bind ZeroMQ socket to {address}: {exc}") from None
        self.sockets.append(sock)
        return sock

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self.config.sub:
            sub = self._bind(zmq.SUB, self.config.sub)
            sub.setsockopt(zmq.SUBSCRIBE, b"")
            self.tasks.append(loop.create_task(self._receive(sub, "sub")))
        if self.config.pull:
            pull = self._bind(zmq.PULL, self.config.pull)
            self.tasks.append(loop.create_task(self._receive(pull, "pull")))
        if self.config.push:
            push = self._bind(zmq.PUSH, self.config.push)
            self.tasks.append(loop.create_task(self._send_events(push)))
        for name in ("sub", "pull", "push"):
            address = getattr(self.config, name)
            if address:
                log.info("ZeroMQ %s socket bound to %s", name.upper(), address)

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for sock in self.sockets:
            sock.close(linger=0)
        self.context.term()

    async def _receive(self, sock: zmq.asyncio.Socket, name: str) -> None:
        commands = name == "pull"
        while True:
            frames = await sock.recv_multipart()
            self.received += 1
            try:
                await self.handle(frames, commands=commands)
            except CommandError as exc:
                self.errors += 1
                log.warning("ZeroMQ %s: command refused: %s", name, exc.message)
            except Exception:
                self.errors += 1
                log.exception("ZeroMQ %s: message failed", name)

    async def handle(self, frames: list[bytes], *, commands: bool = False) -> None:
        """One message from the SUB socket, or from the PULL one (``commands``: a
        single frame that is a JSON command, or an array of them, is run)."""
        hub_commands = self.hub.commands
        if len(frames) == 2:
            channel = frames[0].decode("utf-8", "replace")
            await hub_commands.execute({"op": "publish", "channel": channel, "data": _value(frames[1])})
            return
        if len(frames) != 1:
            raise CommandError("bad_request", f"expected 1 or 2 frames, got {len(frames)}")
        frame = frames[0]
        if commands:
            command = _command(frame)
            if isinstance(command, dict):
                await hub_commands.execute(command)
                return
            if command is not None:
                for result in await hub_commands.execute_many(command):
                    if "error" in result:
                        log.warning("ZeroMQ: command refused: %s", result["error"]["message"])
                return
        elif _looks_like_command(frame):
            complaints.warning("sub-command", "ZeroMQ sub: a message that looks like a JSON command "
                               "was delivered as data to %s: the SUB socket runs no command; send "
                               "commands to the PULL socket ([zeromq] pull)", self.config.default)
        target = self.config.default
        if not target:
            self.unrouted += 1
            raise CommandError("bad_request", "a one-frame message goes to [zeromq] default, and none "
                               "is set (\"channel:<name>\" or \"endpoint:<prefix>\")")
        kind, _, name = target.partition(":")
        data = message_data(frame)
        if kind == "channel":
            await hub_commands.execute({"op": "publish", "channel": name, "data": data})
        else:
            await hub_commands.execute({"op": "broadcast", "endpoint": name, "data": data})

    async def _send_events(self, sock: zmq.asyncio.Socket) -> None:
        queue = self.queue
        assert queue is not None
        while True:
            await queue.wait()
            for _event, data in queue.take(1000):
                await sock.send(data)
                queue.sent += 1

    def stats(self) -> dict:
        return {"received": self.received, "errors": self.errors, "unrouted": self.unrouted}


_CONTAINER = re.compile(rb"[ \t\r\n]*[\[{]")
"""The start of a JSON object or array (JSON's whitespace first, RFC 8259 section 2)."""


def _command(frame: bytes) -> dict | list | None:
    """The command (a JSON object with ``op``) or non-empty array of commands that
    ``frame`` holds, or None. Only a frame that starts with ``{`` or ``[`` (after
    whitespace) is parsed."""
    if not _CONTAINER.match(frame):
        return None
    try:
        value = loads(frame)
    except (ValueError, UnicodeDecodeError):
        return None
    if isinstance(value, dict) and "op" in value:
        return value
    if isinstance(value, list) and value and all(isinstance(c, dict) and "op" in c for c in value):
        return value
    return None


def _looks_like_command(frame: bytes) -> bool:
    """Whether a frame on the SUB socket looks like what a program written for the
    SUB socket's former rule (commands there too) would send: a JSON object or array
    with an ``"op"`` key somewhere. Only for a warning; nothing is parsed."""
    return _CONTAINER.match(frame) is not None and b'"op"' in frame


def _value(frame: bytes):
    """A frame's content: JSON when it parses, else the text."""
    try:
        return loads(frame)
    except (ValueError, UnicodeDecodeError):
        return frame.decode("utf-8", "replace")
