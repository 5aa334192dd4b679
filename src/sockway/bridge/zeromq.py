"""The talk's ZeroMQ pattern (docs/bridge.md, "ZeroMQ").

* A bound **SUB** socket (``[zeromq] sub``, e.g. tcp://127.0.0.1:5555) that any program
  PUB-connects to and publishes commands into, and a bound **PULL** socket
  (``[zeromq] pull``) for programs that PUSH-connect instead.
* A bound **PUSH** socket (``[zeromq] push``, e.g. tcp://127.0.0.1:5556) from which any
  number of worker processes PULL application events (one JSON object per message).

Wire format of what comes in, one ZeroMQ message each:

* one frame holding a JSON command object (``{"op": ...}``) or a JSON array of them;
* two frames ``[channel, data]``: publish ``data`` (JSON if it parses, else the string)
  to ``channel``, like a topic-prefixed PUB/SUB message;
* one frame that is anything else: published to ``[zeromq] default`` (``channel:<name>``
  or ``endpoint:<prefix>``), so a script that connects and sends one string works.

A PUB socket drops what it sends before its connection (and the gateway's subscription)
is up: ZeroMQ's "slow joiner". A script that connects and sends at once should PUSH to
the PULL socket, which queues until connected, or wait ~100 ms after connecting.
Nothing comes back on these sockets; commands that need an answer go over HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

import zmq
import zmq.asyncio

from sockway.bridge.commands import CommandError
from sockway.jsonutil import loads

if TYPE_CHECKING:
    from sockway.bridge.events import EventQueue
    from sockway.config import ZmqConfig
    from sockway.hub.hub import Hub

__all__ = ["ZmqBridge"]

log = logging.getLogger("sockway.zeromq")


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
        while True:
            frames = await sock.recv_multipart()
            self.received += 1
            try:
                await self.handle(frames)
            except CommandError as exc:
                self.errors += 1
                log.warning("ZeroMQ %s: command refused: %s", name, exc.message)
            except Exception:
                self.errors += 1
                log.exception("ZeroMQ %s: message failed", name)

    async def handle(self, frames: list[bytes]) -> None:
        commands = self.hub.commands
        if len(frames) == 2:
            channel = frames[0].decode("utf-8", "replace")
            await commands.execute({"op": "publish", "channel": channel, "data": _value(frames[1])})
            return
        if len(frames) != 1:
            raise CommandError("bad_request", f"expected 1 or 2 frames, got {len(frames)}")
        value = _value(frames[0])
        if isinstance(value, dict) and "op" in value:
            await commands.execute(value)
            return
        if isinstance(value, list) and value and all(isinstance(c, dict) and "op" in c for c in value):
            for result in await commands.execute_many(value):
                if "error" in result:
                    log.warning("ZeroMQ: command refused: %s", result["error"]["message"])
            return
        target = self.config.default
        if not target:
            self.unrouted += 1
            raise CommandError("bad_request", "not a command, and no [zeromq] default is set "
                               "(\"channel:<name>\" or \"endpoint:<prefix>\")")
        kind, _, name = target.partition(":")
        if kind == "channel":
            await commands.execute({"op": "publish", "channel": name, "data": value})
        else:
            await commands.execute({"op": "broadcast", "endpoint": name, "data": value})

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


def _value(frame: bytes):
    """A frame's content: JSON when it parses, else the text."""
    try:
        return loads(frame)
    except (ValueError, UnicodeDecodeError):
        return frame.decode("utf-8", "replace")
