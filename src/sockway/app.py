"""The application side for synchronous code: no asyncio needed.

Talk to the gateway from Django, Flask, a cron job or a script::

    from sockway.app import Client, Worker

    gateway = Client("http://127.0.0.1:8080", key="...")   # the HTTP API
    gateway.publish("news", {"title": "hello"})
    gateway.send(conn_id, "just for you")
    gateway.close(conn_id, 4000, "bye")

    publisher = ZmqPublisher("tcp://127.0.0.1:5557")       # a PUSH to the gateway's PULL
    publisher.publish("news", {"title": "hello"})
    publisher.raw('{"as": "is"}')                           # byte for byte to [zeromq] default

    worker = Worker("tcp://127.0.0.1:5556", gateway)         # PULL events from the PUSH
    @worker.on("message")
    def echo(event, reply):
        reply.send(event["conn"], event["data"])
    worker.run()

Only the standard library and pyzmq (for the ZeroMQ classes) are used.
"""

from __future__ import annotations

import atexit
import json
import logging
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["Client", "GatewayError", "Worker", "ZmqPublisher"]

log = logging.getLogger("sockway.app")


class GatewayError(Exception):
    """The gateway refused a command: ``code`` and ``status`` say why."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


class Client:
    """Blocking calls to the HTTP API (``/api/...``)."""

    def __init__(self, url: str, key: str, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.key = key
        self.timeout = timeout

    def _call(self, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path, data=data, method="GET" if body is None else "POST",
            headers={"Authorization": f"Bearer {self.key}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            try:
                error = json.loads(exc.read())["error"]
            except Exception:
                raise GatewayError(exc.code, "http_error", str(exc)) from None
            raise GatewayError(exc.code, error.get("code", "?"), error.get("message", "")) from None

    def command(self, op: str, **fields: Any) -> dict:
        return self._call(f"/api/{op}", fields)["result"]

    def publish(self, channel: str, data: Any) -> dict:
        """Publish to a channel; returns its new ``offset`` and ``epoch``."""
        return self.command("publish", channel=channel, data=data)

    def broadcast(self, endpoint: str, data: Any) -> dict:
        return self.command("broadcast", endpoint=endpoint, data=data)

    def send(self, conn: str, data: Any) -> dict:
        return self.command("send", conn=conn, data=data)

    def subscribe(self, conn: str, channel: str, since: dict | None = None) -> dict:
        fields: dict = {"conn": conn, "channel": channel}
        if since is not None:
            fields["since"] = since
        return self.command("subscribe", **fields)

    def unsubscribe(self, conn: str, channel: str) -> dict:
        return self.command("unsubscribe", conn=conn, channel=channel)

    def close(self, conn: str, code: int = 3000, reason: str = "") -> dict:
        return self.command("close", conn=conn, code=code, reason=reason)

    def accept(self, conn: str, user: str | None = None) -> dict:
        return self.command("accept", conn=conn, user=user)

    def reply(self, event: str, allow: bool, reason: str = "") -> dict:
        return self.command("reply", event=event, allow=allow, reason=reason)

    def presence(self, channel: str) -> dict:
        return self.command("presence", channel=channel)["clients"]

    def history(self, channel: str, limit: int | None = None, since: dict | None = None) -> dict:
        fields: dict = {"channel": channel}
        if limit is not None:
            fields["limit"] = limit
        if since is not None:
            fields["since"] = since
        return self.command("history", **fields)

    def commands(self, commands: list[dict]) -> list[dict]:
        """Several commands in one request, run in order."""
        return self._call("/api/commands", commands)["results"]

    def stats(self) -> dict:
        return self._call("/api/stats")["result"]


class ZmqPublisher:
    """Messages and commands over ZeroMQ, fire and forget.

    ``push=True`` (default) connects a PUSH socket to the gateway's PULL address: what
    is sent right after connecting is kept until the connection is up, and commands
    (:meth:`command`, :meth:`publish`, :meth:`broadcast`, :meth:`send`) travel there as
    one JSON frame each. ``push=False`` connects a PUB socket to the gateway's SUB
    address, as in the talk; it waits ``settle`` seconds after connecting, since a PUB
    socket drops what it sends before the gateway's subscription has arrived. The SUB
    socket runs no command: there :meth:`publish` sends two frames ``[channel, data]``,
    and the other commands raise ValueError.

    :meth:`raw` sends one frame, exactly as given, on either socket: the gateway
    delivers it byte for byte to its ``[zeromq] default`` target (docs/bridge.md).

    Sending only queues: the message leaves from ZeroMQ's I/O thread. :meth:`close`
    waits, at most ``linger`` seconds, until what was sent has left, then ends that
    thread; a publisher still open when the interpreter exits is closed then, so that a
    short script that publishes and ends does not lose its message.
    """

    def __init__(self, address: str, push: bool = True, settle: float = 0.2, linger: float = 2.0) -> None:
        import zmq

        self._zmq = zmq
        self.push = push
        # A context of its own: closing it is what waits for the queued messages (the
        # shared Context.instance() is never terminated at exit, and its I/O thread dies
        # with whatever is still queued).
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.PUSH if push else zmq.PUB)
        self.socket.setsockopt(zmq.LINGER, int(linger * 1000))
        self.socket.connect(address)
        _open_publishers.add(self)
        if not push and settle:
            time.sleep(settle)

    def raw(self, message: str | bytes) -> None:
        """One frame, exactly ``message`` (a string as UTF-8): delivered byte for byte to
        the gateway's ``[zeromq] default`` target. On the PULL socket a frame that is a
        JSON command runs instead; the SUB socket (``push=False``) runs none."""
        self.socket.send(message.encode("utf-8") if isinstance(message, str) else message)

    def command(self, op: str, **fields: Any) -> None:
        """One command, as a JSON frame to the PULL socket."""
        if not self.push:
            raise ValueError(f"the gateway's SUB socket runs no command ({op!r}): use its PULL "
                             "socket (push=True); on SUB, publish() and raw() work")
        self.socket.send(json.dumps({"op": op, **fields}).encode())

    def publish(self, channel: str, data: Any) -> None:
        """Publish ``data`` (any JSON value) to ``channel``."""
        if self.push:
            self.command("publish", channel=channel, data=data)
        else:
            self.socket.send_multipart([channel.encode(), json.dumps(data).encode()])

    def broadcast(self, endpoint: str, data: Any) -> None:
        self.command("broadcast", endpoint=endpoint, data=data)

    def send(self, conn: str, data: Any) -> None:
        self.command("send", conn=conn, data=data)

    def close(self) -> None:
        """Wait (at most ``linger`` seconds) for what was sent to leave, then close."""
        _open_publishers.discard(self)
        if not self.context.closed:
            self.socket.close()
            self.context.term()

    def __enter__(self) -> ZmqPublisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_open_publishers: weakref.WeakSet[ZmqPublisher] = weakref.WeakSet()


@atexit.register
def _close_publishers() -> None:
    # Publishers left open: closing waits for their queued messages (pyzmq itself does
    # not terminate contexts at exit).
    for publisher in list(_open_publishers):
        publisher.close()


Handler = Callable[[dict, "Client"], None]


class Worker:
    """Consume application events from the gateway's PUSH socket, in a plain loop.

    Handlers are called with the event and the :class:`Client` to answer with.
    Duplicate event ids (a redelivery) are skipped. A handler that raises (say, a
    ``send`` to a client that has left in the meantime: GatewayError 404) is logged and
    counted in ``failed``; the loop goes on with the next event.
    """

    def __init__(self, address: str, client: Client | None = None, *, remember: int = 10_000) -> None:
        import zmq

        self._zmq = zmq
        self.address = address
        self.client = client
        self.handlers: dict[str, list[Handler]] = {}
        self.context = zmq.Context.instance()
        self.socket = self.context.socket(zmq.PULL)
        self.socket.connect(address)
        self._seen: dict[str, None] = {}
        self._remember = remember
        self.failed = 0

    def on(self, kind: str) -> Callable[[Handler], Handler]:
        """Register a handler for events of ``kind`` ("open", "message", "close", "*")."""

        def register(handler: Handler) -> Handler:
            self.handlers.setdefault(kind, []).append(handler)
            return handler

        return register

    def events(self, timeout: float | None = None) -> Iterator[dict]:
        """Events as they come; stops after ``timeout`` seconds without one."""
        poller = self._zmq.Poller()
        poller.register(self.socket, self._zmq.POLLIN)
        while True:
            ready = dict(poller.poll(None if timeout is None else int(timeout * 1000)))
            if self.socket not in ready:
                return
            event = json.loads(self.socket.recv())
            event_id = event.get("id")
            if event_id is not None:
                if event_id in self._seen:
                    continue
                self._seen[event_id] = None
                if len(self._seen) > self._remember:
                    self._seen.pop(next(iter(self._seen)))
            yield event

    def run(self, timeout: float | None = None, max_events: int | None = None) -> int:
        """Dispatch events to handlers; returns how many were handled."""
        count = 0
        for event in self.events(timeout):
            for handler in self.handlers.get(event.get("type", ""), []) + self.handlers.get("*", []):
                try:
                    handler(event, self.client)  # type: ignore[arg-type]
                except Exception:
                    self.failed += 1
                    log.exception("handler %s failed on %s event %s of connection %s",
                                  getattr(handler, "__name__", handler), event.get("type"),
                                  event.get("id"), event.get("conn"))
            count += 1
            if max_events is not None and count >= max_events:
                break
        return count

    def close(self) -> None:
        self.socket.close()
