"""The application side over Redis, for synchronous code (blocking redis-py, no asyncio).

Events: the gateway adds each application event to a Redis Stream
(``[broker] url = "redis://...?events=on"``: the stream ``sockway:events``). Workers
read it in a consumer group, so each event goes to one worker of the group::

    from sockway.app_redis import RedisCommands, RedisWorker

    gateway = RedisCommands("redis://127.0.0.1:6379/0")
    worker = RedisWorker("redis://127.0.0.1:6379/0")

    @worker.on("message")
    def echo(event, reply):
        reply.send(event["conn"], event["data"])

    worker.run()

At least once, and what that rests on: an event is acknowledged (XACK) only after every
handler for it returned. A worker that dies before that leaves it *pending* in the
group; any live worker takes over entries pending for longer than ``claim_idle``
seconds (XAUTOCLAIM) and handles them. So an event can be handled twice (the first
worker died after handling, before acknowledging; or the gateway sent it twice after a
lost answer): a worker skips event ids it has seen (the last ``remember`` of them), and
handlers should be idempotent for what crosses workers. A handler that raises leaves
its event pending: it comes back after ``claim_idle``.

Commands: :class:`RedisCommands` pushes command objects onto the list
``sockway:commands``, which every gateway node pops (BRPOP), so each command runs on
exactly one node, and a command for a connection on another node is forwarded there.
``wait=True`` asks for the answer (the node pushes it onto a reply list).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import redis

from sockway.app import GatewayError

__all__ = ["RedisCommands", "RedisWorker"]

log = logging.getLogger("sockway.app_redis")


class RedisCommands:
    """Commands to the gateway through Redis (LPUSH onto ``<prefix>:commands``)."""

    def __init__(self, url: str = "redis://127.0.0.1:6379/0", prefix: str = "sockway",
                 timeout: float = 10.0) -> None:
        self.redis = redis.Redis.from_url(url, socket_timeout=timeout + 5)
        self.key = f"{prefix}:commands"
        self.prefix = prefix
        self.timeout = timeout

    def command(self, op: str, wait: bool = False, **fields: Any) -> dict | None:
        """Send one command. ``wait``: block until a node has run it and return its
        result (raises :class:`GatewayError` if it was refused, ``TimeoutError`` if no
        node answered within ``timeout``)."""
        cmd: dict = {"op": op, **fields}
        if not wait:
            self.redis.lpush(self.key, json.dumps(cmd))
            return None
        reply_to = f"{self.prefix}:reply:{os.urandom(8).hex()}"
        cmd["reply_to"] = reply_to
        self.redis.lpush(self.key, json.dumps(cmd))
        answer = self.redis.brpop([reply_to], timeout=self.timeout)
        if answer is None:
            raise TimeoutError(f"no gateway node answered {op!r} within {self.timeout}s")
        body = json.loads(answer[1])
        if "error" in body:
            error = body["error"]
            raise GatewayError(int(error.get("status", 400)), error.get("code", "?"), error.get("message", ""))
        return body["result"]

    def publish(self, channel: str, data: Any, wait: bool = False) -> dict | None:
        return self.command("publish", wait, channel=channel, data=data)

    def send(self, conn: str, data: Any, wait: bool = False) -> dict | None:
        return self.command("send", wait, conn=conn, data=data)

    def close(self, conn: str, code: int = 3000, reason: str = "", wait: bool = False) -> dict | None:
        return self.command("close", wait, conn=conn, code=code, reason=reason)

    def subscribe(self, conn: str, channel: str, wait: bool = False) -> dict | None:
        return self.command("subscribe", wait, conn=conn, channel=channel)


Handler = Callable[[dict, Any], None]


class RedisWorker:
    """Consume application events from the gateway's Redis Stream in a consumer group."""

    def __init__(self, url: str = "redis://127.0.0.1:6379/0", *, prefix: str = "sockway",
                 stream: str | None = None, group: str = "sockway", consumer: str | None = None,
                 reply: Any = None, claim_idle: float = 30.0, batch: int = 100, block: float = 1.0,
                 remember: int = 10_000) -> None:
        """``prefix``: the gateway's (``?prefix=``); ``stream``: the events stream
        (default ``<prefix>:events``, or what ``?events=<key>`` named); ``reply``: what
        handlers get to answer with (default: :class:`RedisCommands` on the same Redis)."""
        self.redis = redis.Redis.from_url(url, socket_timeout=block + 10)
        self.stream = stream or f"{prefix}:events"
        self.group = group
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        self.reply = reply if reply is not None else RedisCommands(url, prefix)
        self.claim_idle = claim_idle
        self.batch = batch
        self.block = block
        self.handlers: dict[str, list[Handler]] = {}
        self._seen: dict[str, None] = {}
        self._remember = remember
        self._claim_from = "0-0"
        self._next_claim = 0.0
        self.handled = 0
        self.claimed = 0
        self.duplicates = 0
        try:
            self.redis.xgroup_create(self.stream, group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def on(self, kind: str) -> Callable[[Handler], Handler]:
        """Register a handler for events of ``kind`` ("open", "message", "close", "*")."""

        def register(handler: Handler) -> Handler:
            self.handlers.setdefault(kind, []).append(handler)
            return handler

        return register

    def _entries(self) -> Iterator[tuple[bytes, dict]]:
        """This consumer's own pending entries first (a restart with the same name),
        then others' stale ones (claimed), then new ones."""
        own = self.redis.xreadgroup(self.group, self.consumer, {self.stream: "0"}, count=self.batch)
        for _stream, entries in own or []:
            for entry_id, fields in entries:
                if fields:
                    yield entry_id, fields
        while True:
            now = time.monotonic()
            if now >= self._next_claim:
                self._next_claim = now + max(self.claim_idle / 2, 0.1)
                result = self.redis.xautoclaim(self.stream, self.group, self.consumer,
                                               int(self.claim_idle * 1000), self._claim_from,
                                               count=self.batch)
                self._claim_from = result[0] if result[0] not in (b"0-0", "0-0") else "0-0"
                for entry_id, fields in result[1]:
                    if fields:
                        self.claimed += 1
                        yield entry_id, fields
            got = self.redis.xreadgroup(self.group, self.consumer, {self.stream: ">"},
                                        count=self.batch, block=int(self.block * 1000))
            if not got:
                yield b"", {}  # a tick: lets run() notice its timeout
                continue
            for _stream, entries in got:
                yield from entries

    def run(self, timeout: float | None = None, max_events: int | None = None) -> int:
        """Handle events until ``timeout`` seconds pass without one (forever if None) or
        ``max_events`` were handled; returns how many were handled."""
        count = 0
        idle_since = time.monotonic()
        for entry_id, fields in self._entries():
            if not entry_id:
                if timeout is not None and time.monotonic() - idle_since >= timeout:
                    return count
                continue
            idle_since = time.monotonic()
            self.handle(entry_id, fields)
            count += 1
            if max_events is not None and count >= max_events:
                return count
        return count

    def handle(self, entry_id: bytes, fields: dict) -> None:
        """Run the handlers of one entry, then acknowledge it."""
        event = json.loads(fields[b"e"])
        event_id = event.get("id")
        if event_id is not None and event_id in self._seen:
            self.duplicates += 1
        else:
            try:
                for handler in self.handlers.get(event.get("type", ""), []) + self.handlers.get("*", []):
                    handler(event, self.reply)
            except Exception:
                log.exception("handler failed on event %s; it stays pending", event_id)
                return
            if event_id is not None:
                self._seen[event_id] = None
                if len(self._seen) > self._remember:
                    self._seen.pop(next(iter(self._seen)))
            self.handled += 1
        self.redis.xack(self.stream, self.group, entry_id)

    def close(self) -> None:
        self.redis.close()
