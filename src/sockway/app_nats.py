"""The application side over NATS, for synchronous code: blocking calls, the asyncio
client (nats-py) kept inside.

Events: the gateway publishes each application event into the JetStream stream
``SOCKWAY_EVENTS`` (``[broker] url = "nats://...?events=on"``). Workers share one durable
pull consumer, so each event goes to one worker::

    from sockway.app_nats import NatsCommands, NatsWorker

    worker = NatsWorker("nats://127.0.0.1:4222")

    @worker.on("message")
    def echo(event, reply):
        reply.send(event["conn"], event["data"])

    worker.run()

    gateway = NatsCommands("nats://127.0.0.1:4222")
    gateway.publish("news", {"title": "hello"})

At least once, and what that rests on: a worker acknowledges an event only after every
handler for it returned. JetStream gives an event nobody acknowledged within
``ack_wait`` seconds (its worker died, or hangs) to another worker of the durable
consumer. So an event can be handled twice: a worker skips event ids it has seen (the
last ``remember``), and handlers should be idempotent for what crosses workers. A
handler that raises leaves its event unacknowledged: it comes back after ``ack_wait``.

Commands: requests on the subject ``sockway.commands``, which every gateway node
subscribes to in one queue group, so each runs on exactly one node (and a command for a
connection on another node is forwarded there); the answer comes back as the reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections.abc import Callable
from typing import Any

import nats
from nats.js import api as js_api
from nats.js.errors import APIError, NotFoundError

from sockway.app import GatewayError
from sockway.brokers.urls import jetstream_name, nats_servers

__all__ = ["NatsCommands", "NatsWorker"]

log = logging.getLogger("sockway.app_nats")


def _answer(raw: bytes) -> dict:
    body = json.loads(raw)
    if "error" in body:
        error = body["error"]
        raise GatewayError(int(error.get("status", 400)), error.get("code", "?"), error.get("message", ""))
    return body["result"]


async def quiet_errors(exc: Exception) -> None:
    """nats-py prints every connection error with a traceback; callers get them as
    exceptions instead."""


class NatsCommands:
    """Blocking commands to the gateway over NATS request/reply (an event loop of its
    own runs in a daemon thread)."""

    def __init__(self, url: str = "nats://127.0.0.1:4222", prefix: str = "sockway",
                 timeout: float = 10.0) -> None:
        self.subject = f"{prefix}.commands"
        self.timeout = timeout
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._nc = self._call(nats.connect(nats_servers(url), connect_timeout=timeout, error_cb=quiet_errors,
                                           max_reconnect_attempts=2))

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(self.timeout + 5)

    def command(self, op: str, wait: bool = True, **fields: Any) -> dict | None:
        """Run one command on some node. ``wait``: return its result (raises
        :class:`GatewayError` if refused, ``TimeoutError`` if no node answered)."""
        payload = json.dumps({"op": op, **fields}).encode()
        if not wait:
            self._call(self._nc.publish(self.subject, payload))
            self._call(self._nc.flush())
            return None
        try:
            reply = self._call(self._nc.request(self.subject, payload, timeout=self.timeout))
        except nats.errors.NoRespondersError:
            raise GatewayError(503, "unavailable", "no gateway node listens on " + self.subject) from None
        except nats.errors.TimeoutError:
            raise TimeoutError(f"no gateway node answered {op!r} within {self.timeout}s") from None
        return _answer(reply.data)

    def publish(self, channel: str, data: Any, wait: bool = True) -> dict | None:
        return self.command("publish", wait, channel=channel, data=data)

    def send(self, conn: str, data: Any, wait: bool = True) -> dict | None:
        return self.command("send", wait, conn=conn, data=data)

    def close_connection(self, conn: str, code: int = 3000, reason: str = "", wait: bool = True) -> dict | None:
        return self.command("close", wait, conn=conn, code=code, reason=reason)

    def close(self) -> None:
        try:
            self._call(self._nc.close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)


class Reply:
    """Commands from inside a :class:`NatsWorker` handler: sent without waiting, in the
    order given, once the handler has returned."""

    def __init__(self, nc: Any, subject: str) -> None:
        self._nc = nc
        self._subject = subject

    def command(self, op: str, **fields: Any) -> None:
        payload = json.dumps({"op": op, **fields}).encode()
        asyncio.get_running_loop().create_task(self._nc.publish(self._subject, payload))

    def publish(self, channel: str, data: Any) -> None:
        self.command("publish", channel=channel, data=data)

    def send(self, conn: str, data: Any) -> None:
        self.command("send", conn=conn, data=data)

    def close(self, conn: str, code: int = 3000, reason: str = "") -> None:
        self.command("close", conn=conn, code=code, reason=reason)


Handler = Callable[[dict, Reply], None]


class NatsWorker:
    """Consume application events from the gateway's JetStream stream through a durable
    pull consumer shared by every worker of the application."""

    def __init__(self, url: str = "nats://127.0.0.1:4222", *, prefix: str = "sockway",
                 durable: str = "sockway-workers", ack_wait: float = 30.0, batch: int = 10,
                 remember: int = 10_000, replicas: int = 1) -> None:
        self.url = url
        self.replicas = replicas
        """JetStream replicas of the events stream if this worker is the first to make it
        (give the gateway's ``replicas`` option)."""
        self.prefix = prefix
        self.stream = f"{jetstream_name(prefix)}_EVENTS"
        self.subject = f"{prefix}.events"
        self.durable = durable
        self.ack_wait = ack_wait
        self.batch = batch
        self.handlers: dict[str, list[Handler]] = {}
        self._seen: dict[str, None] = {}
        self._remember = remember
        self.handled = 0
        self.redelivered = 0
        self.duplicates = 0

    def on(self, kind: str) -> Callable[[Handler], Handler]:
        """Register a handler for events of ``kind`` ("open", "message", "close", "*")."""

        def register(handler: Handler) -> Handler:
            self.handlers.setdefault(kind, []).append(handler)
            return handler

        return register

    def run(self, timeout: float | None = None, max_events: int | None = None) -> int:
        """Handle events until ``timeout`` seconds pass without one (forever if None) or
        ``max_events`` were handled; returns how many were handled."""
        return asyncio.run(self._run(timeout, max_events))

    async def _run(self, timeout: float | None, max_events: int | None) -> int:
        nc = await nats.connect(nats_servers(self.url), connect_timeout=5)
        try:
            js = nc.jetstream()
            try:
                await js.stream_info(self.stream)
            except NotFoundError:
                # Not made by the gateway yet (it makes it, with its limits, on its first
                # event): make it, so that events are kept from now on.
                with contextlib.suppress(APIError):
                    await js.add_stream(js_api.StreamConfig(name=self.stream, subjects=[self.subject],
                                                            storage=js_api.StorageType.FILE,
                                                            num_replicas=self.replicas))
            consumer = js_api.ConsumerConfig(durable_name=self.durable, ack_wait=self.ack_wait,
                                             ack_policy=js_api.AckPolicy.EXPLICIT, max_deliver=-1)
            psub = await js.pull_subscribe(self.subject, durable=self.durable, stream=self.stream,
                                           config=consumer)
            reply = Reply(nc, f"{self.prefix}.commands")
            loop = asyncio.get_running_loop()
            count = 0
            idle_since = loop.time()
            while max_events is None or count < max_events:
                try:
                    msgs = await psub.fetch(min(self.batch, (max_events or self.batch) - count), timeout=0.5)
                except TimeoutError:  # nats' and asyncio's (a fetch raises either)
                    if timeout is not None and loop.time() - idle_since >= timeout:
                        break
                    continue
                idle_since = loop.time()
                for msg in msgs:
                    if await self._handle(msg, reply):
                        count += 1
            await nc.flush()
            return count
        finally:
            await nc.close()

    async def _handle(self, msg: Any, reply: Reply) -> bool:
        event = json.loads(msg.data)
        event_id = event.get("id")
        if msg.metadata.num_delivered > 1:
            self.redelivered += 1
        if event_id is not None and event_id in self._seen:
            self.duplicates += 1
            await msg.ack()
            return False
        try:
            for handler in self.handlers.get(event.get("type", ""), []) + self.handlers.get("*", []):
                handler(event, reply)
        except Exception:
            log.exception("handler failed on event %s; it will come back", event_id)
            return False
        if event_id is not None:
            self._seen[event_id] = None
            if len(self._seen) > self._remember:
                self._seen.pop(next(iter(self._seen)))
        await msg.ack()
        self.handled += 1
        return True
