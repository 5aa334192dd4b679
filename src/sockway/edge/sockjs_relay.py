"""SockJS sessions shared by the nodes of a cluster: any node serves any request of a
session, so a load balancer may spread a client's polls, sends and streams over every
node (plain round-robin, no stickiness). docs/deployment.md has the why and the costs.

A SockJS session over HTTP is many requests (sockjs-protocol "Session URLs"): polls,
``xhr_send`` / ``jsonp_send``, a stream reopened after ``response_limit``. Its state —
the queue, the one-receiver rule, timers, subscriptions, the application's view of the
connection — lives on one node, its **owner**, exactly as on a single node. The others
relay to it:

* **Ownership.** The node that gets a session's first receiving request claims it in the
  broker (Redis: ``SET NX`` with a TTL; NATS: a KV bucket with a TTL), which keeps the
  record alive while the node holds the session and deletes it when the session ends.
  Other nodes look the owner up (and cache the answer: a session never changes owner).
* **Sends** are request/reply: the serving node reads the body, the owner decodes and
  delivers it and answers the status the client must get (204, 404, 500 "Broken JSON
  encoding.", 413...), which the serving node sends with its own headers.
* **Receiving requests** attach a :class:`~.sockjs_http.RemoteReceiver` on the owner.
  The serving node *pulls*: each pull is answered with the frames due, already wrapped
  for the transport, as soon as there are some (or a heartbeat after
  ``heartbeat_delay``); it writes them and pulls again. A poll is one pull. Pulling,
  not pushing, keeps frames in order and bounds what is in flight to one answer per
  request, with the session's queue (and its limit) on the owner as on one node;
  messages that come in while the serving node writes are coalesced into the next
  answer. The owner decides when a streaming response ends (close frame,
  ``response_limit``) and detaches the receiver *before* it answers, so the client's
  next request finds it detached wherever it lands. A client that goes away is seen by
  the serving node (its transport closes), which tells the owner (1002, as locally);
  a serving node that dies is found by the owner asking it, after ``PROBE_AFTER``
  seconds without a pull, whether the request is still there.
* **A lost owner.** A request for a session whose owner is gone (its record is still
  there but nobody answers) gets ``c[1006,"Session lost"]``: the session's queue,
  subscriptions and application state died with the node, and starting a new session
  under the same id would hide that (sockjs-client itself closes with 1006 "Server lost
  session" when it sees a second ``o``, which is what a client gets once the record
  has expired). 1006 is the code browsers use for a connection lost without a close.

Requests for sessions the node owns take the local path, without any broker round trip;
WebSocket connections (one TCP connection each) never come here.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import time
import weakref
from typing import TYPE_CHECKING, Any

from sockway.brokers.base import BrokerUnavailable
from sockway.edge.sockjs_http import (
    TRANSPORT_NAMES,
    HttpSession,
    RemoteReceiver,
    frame_wrapper,
    next_frames,
    poll_frame,
    stream_chunk,
)
from sockway.jsonutil import dumps, loads
from sockway.sockjs.frames import CALLBACK_RE, close_frame

if TYPE_CHECKING:
    from aiohttp import web

    from sockway.edge.routes import EndpointRoutes
    from sockway.hub.hub import Hub

__all__ = ["SESSION_LOST", "RelayedReceive", "SessionRelay", "session_relay"]

log = logging.getLogger("sockway.sockjs")

SESSION_LOST = close_frame(1006, "Session lost")
RELAY_TIMEOUT = 5.0
"""Seconds a node waits for the owner's answer (plus heartbeat_delay for a pull, which
the owner holds until it has frames or a heartbeat is due)."""
PROBE_AFTER = 10.0
"""Seconds without a pull after which the owner asks the serving node whether a
streaming request is still there."""
OWNERS_CACHED = 10_000
OWNER_TTL = 60.0
"""Seconds a looked-up owner is remembered (a session never changes owner; a stale entry
is found out by the owner's answer and looked up again)."""

_relays: weakref.WeakKeyDictionary[Hub, SessionRelay] = weakref.WeakKeyDictionary()


def session_relay(hub: Hub) -> SessionRelay | None:
    """The hub's relay, or None when its broker does not share sessions."""
    if not getattr(hub.broker, "shares_sessions", False):
        return None
    relay = _relays.get(hub)
    if relay is None:
        relay = _relays[hub] = SessionRelay(hub)
    return relay


def _encode(header: dict, body: bytes = b"") -> bytes:
    return dumps(header) + b"\n" + body


def _decode(payload: bytes) -> tuple[dict, bytes]:
    head, _, body = payload.partition(b"\n")
    return loads(head), body


class RelayedReceive:
    """A receiving request this node serves for a session another node owns."""

    __slots__ = ("aborting", "callback", "ended", "owner", "prefix", "relay", "request", "rid", "session_id",
                 "transport")

    def __init__(self, relay: SessionRelay, owner: str, prefix: str, session_id: str,
                 request: web.BaseRequest, transport: str, callback: str | None) -> None:
        self.relay = relay
        self.owner = owner
        self.prefix = prefix
        self.session_id = session_id
        self.request = request
        self.transport = transport
        self.callback = callback
        self.rid = f"{relay.node_id}-{next(relay.ids)}"
        self.ended = False
        """The owner no longer has it attached (or was told so)."""
        self.aborting = False

    @property
    def client_gone(self) -> bool:
        transport = self.request.transport
        return transport is None or transport.is_closing()

    async def open(self, poll: bool, heartbeat_delay: float) -> tuple[str, bool, bytes]:
        """Attach on the owner: ``(status, end, data)``. A poll waits there for its
        frame; a stream gets what is due at once (the open frame, queued messages)."""
        self.relay.calls[self.rid] = self
        header = {"op": "recv", "ep": self.prefix, "sid": self.session_id, "rid": self.rid,
                  "tr": self.transport, "cb": self.callback, "poll": poll, "from": self.relay.node_id}
        return await self._exchange(header, RELAY_TIMEOUT + (heartbeat_delay if poll else 0), waits=poll)

    async def pull(self) -> tuple[str, bool, bytes]:
        """The next frames of an attached stream (the owner answers when it has some or
        when a heartbeat is due)."""
        header = {"op": "pull", "ep": self.prefix, "sid": self.session_id, "rid": self.rid}
        config = self.relay.routes[self.prefix].config
        return await self._exchange(header, RELAY_TIMEOUT + config.heartbeat_delay, waits=True)

    async def _exchange(self, header: dict, timeout: float, waits: bool = False) -> tuple[str, bool, bytes]:
        """One request to the owner and its answer: ``(status, end, data)``. One that
        ``waits`` (for frames) gives way when this node starts stopping: the owner is told
        the request ended (not aborted: the session lives on) and the status is
        ``stopping``, so that the client's request ends cleanly and its next one goes to
        another node."""
        relay = self.relay
        try:
            pending = relay.broker.relay(self.owner, _encode(header), timeout)
            if waits:
                exchange = asyncio.ensure_future(pending)
                stopping = relay.stopping()
                try:
                    await asyncio.wait((exchange, stopping), return_when=asyncio.FIRST_COMPLETED)
                except asyncio.CancelledError:
                    exchange.cancel()
                    raise
                if not exchange.done():
                    exchange.cancel()
                    await self.finish(aborted=False)
                    return "stopping", True, b""
                pending = exchange
            answer, data = _decode(await pending)
            status = str(answer.get("st", "error"))
            end = bool(answer.get("end", status != "ok"))
        except LookupError:
            status, end, data = "lost", True, b""
        except TimeoutError:
            status, end, data = "timeout", True, b""
            relay.stats["sessions_timeouts"] += 1
        except BrokerUnavailable as exc:
            status, end, data = "unavailable", True, b""
            relay.unavailable(exc)
        except ValueError:
            status, end, data = "error", True, b""
        relay.stats["sessions_relayed"] += 1
        if end:
            self._ended()
        return status, end, data

    def _ended(self) -> None:
        self.ended = True
        self.relay.calls.pop(self.rid, None)

    async def finish(self, aborted: bool) -> None:
        """The request ends on this side before the owner ended it: the client went
        away (``aborted``: the owner closes the session with 1002) or this node stops."""
        if self.ended:
            return
        self._ended()
        header = {"op": "end", "rid": self.rid, "aborted": aborted}
        try:
            await self.relay.broker.relay(self.owner, _encode(header), RELAY_TIMEOUT)
        except (LookupError, TimeoutError, BrokerUnavailable) as exc:
            log.debug("could not tell node %s that request %s ended: %r", self.owner, self.rid, exc)

    def finish_soon(self, aborted: bool) -> None:
        if not self.ended:
            _spawn(self.finish(aborted))


class SessionRelay:
    """One per hub (every endpoint): finds owners, relays this node's requests for
    sessions it does not own, and answers the requests other nodes relay for sessions
    it owns."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.broker = hub.broker
        self.loop = hub.loop
        self.routes: dict[str, EndpointRoutes] = {}
        self.ids = itertools.count(1)
        self.calls: dict[str, RelayedReceive] = {}
        """Serving side: relayed receiving requests in progress, by request id."""
        self.remote: dict[str, RemoteReceiver] = {}
        """Owner side: receivers of requests served by other nodes, by request id."""
        self._owners: collections.OrderedDict[str, tuple[str, float]] = collections.OrderedDict()
        self._probing: set[str] = set()
        self._warned = 0.0
        self._stopping: asyncio.Future | None = None
        stats = getattr(self.broker, "stats", None)
        self.stats: collections.Counter = stats if isinstance(stats, collections.Counter) else collections.Counter()
        """The broker's counters (in /api/stats and the dashboard), keys ``sessions_*``."""
        self.broker.on_relay = self.handle
        hub.add_sweeper(self.sweep)

    @property
    def node_id(self) -> str:
        return self.hub.node_id

    def add(self, routes: EndpointRoutes) -> None:
        self.routes[routes.endpoint.prefix] = routes

    def stopping(self) -> asyncio.Future:
        """Done when this node starts shutting down (watched 5 times a second, from the
        first relayed request on)."""
        if self._stopping is None:
            self._stopping = self.loop.create_future()
            _spawn(self._watch_shutdown(self._stopping))
        return self._stopping

    async def _watch_shutdown(self, stopping: asyncio.Future) -> None:
        while not self.hub.shutting_down:
            await asyncio.sleep(0.2)
        stopping.set_result(None)

    @staticmethod
    def key(prefix: str, session_id: str) -> str:
        return f"{prefix}/{session_id}"

    def unavailable(self, exc: BaseException) -> None:
        """Log a broker outage once every 10 s, not per request."""
        self.stats["sessions_unavailable"] += 1
        now = time.monotonic()
        if now - self._warned > 10:
            self._warned = now
            log.warning("SockJS sessions: the broker is unavailable (%s); sessions this node does "
                        "not own cannot be reached, new ones are served here only", exc)

    # -- where sessions live ------------------------------------------------------------------

    async def locate(self, prefix: str, session_id: str, *, claim: bool,
                     fresh: bool = False) -> tuple[str | None, bool]:
        """``(owner, cached)``: the node that owns the session (with ``claim``: this node,
        if none did), or None; ``cached`` when the answer came from this node's memory
        (it may be stale: look again with ``fresh`` if that owner does not know the
        session). Raises :class:`BrokerUnavailable`."""
        key = self.key(prefix, session_id)
        owners = self._owners
        if not fresh:
            hit = owners.get(key)
            if hit is not None and hit[1] > self.loop.time():
                owners.move_to_end(key)
                self.stats["sessions_owner_cached"] += 1
                return hit[0], True
        self.stats["sessions_owner_lookups"] += 1
        owner = await (self.broker.session_claim(key) if claim else self.broker.session_owner(key))
        if owner and owner != self.node_id:
            owners[key] = (owner, self.loop.time() + OWNER_TTL)
            owners.move_to_end(key)
            while len(owners) > OWNERS_CACHED:
                owners.popitem(last=False)
        else:
            owners.pop(key, None)
        return owner, False

    def forget(self, prefix: str, session_id: str) -> None:
        self._owners.pop(self.key(prefix, session_id), None)

    def release(self, prefix: str, session_id: str) -> None:
        """A session this node owned has ended (or was never opened)."""
        try:
            self.broker.session_release(self.key(prefix, session_id))
        except Exception as exc:  # its record expires by itself
            log.debug("could not release session %s: %r", session_id, exc)

    # -- serving side ---------------------------------------------------------------------------

    def receive(self, owner: str, prefix: str, session_id: str, request: web.BaseRequest, transport: str,
                callback: str | None) -> RelayedReceive:
        return RelayedReceive(self, owner, prefix, session_id, request, transport, callback)

    async def send(self, owner: str, prefix: str, session_id: str, transport: str,
                   body: bytes) -> tuple[str, int, str | None]:
        """Deliver a send's body on the owner: ``(status, http status, text)``; status is
        ``ok`` (then the HTTP status and text are the owner's answer), ``unknown``,
        ``lost``, ``timeout`` or ``unavailable``."""
        header = {"op": "send", "ep": prefix, "sid": session_id, "tr": transport}
        self.stats["sessions_sends_relayed"] += 1
        try:
            answer, _ = _decode(await self.broker.relay(owner, _encode(header, body), RELAY_TIMEOUT))
        except LookupError:
            return "lost", 404, None
        except TimeoutError:
            self.stats["sessions_timeouts"] += 1
            return "timeout", 503, None
        except BrokerUnavailable as exc:
            self.unavailable(exc)
            return "unavailable", 503, None
        except ValueError:
            return "error", 500, None
        status = str(answer.get("st", "error"))
        if status != "ok":
            return status, 500 if status == "error" else 404, None
        return status, int(answer.get("status", 500)), answer.get("text")

    # -- owner side -----------------------------------------------------------------------------

    async def handle(self, payload: bytes) -> bytes:
        """Answer a request relayed by another node (Broker.on_relay). The synchronous
        part of each request (attaching, delivering) runs before its first await, so
        requests take effect in the order they arrive."""
        try:
            header, body = _decode(payload)
            op = header.get("op")
            if op == "alive":
                calls = self.calls
                return _encode({"st": "ok", "alive": [r for r in header.get("rids", ()) if r in calls]})
            if op == "end":
                return self._end(header)
            routes = self.routes.get(header.get("ep"))
            session = routes.registry.get(header.get("sid")) if routes is not None else None
            if session is None:
                return _encode({"st": "unknown", "end": True})
            if op == "send":
                status, text = routes.deliver(session, body, str(header.get("tr")))
                return _encode({"st": "ok", "status": status, "text": text})
            if op == "recv":
                return await self._recv(session, header)
            if op == "pull":
                return await self._pull(session, header)
            return _encode({"st": "error", "end": True})
        except Exception:
            log.exception("a relayed SockJS request failed")
            return _encode({"st": "error", "end": True})

    async def _recv(self, session: HttpSession, header: dict) -> bytes:
        transport = str(header.get("tr"))
        callback = header.get("cb")
        bad_callback = not (isinstance(callback, str) and CALLBACK_RE.fullmatch(callback))
        if transport not in TRANSPORT_NAMES or (transport in ("jsonp", "htmlfile") and bad_callback):
            return _encode({"st": "error", "end": True})
        rid = str(header.get("rid"))
        receiver = RemoteReceiver(session, rid, str(header.get("from")), frame_wrapper(transport, callback))
        session.transport_name = TRANSPORT_NAMES[transport]
        if header.get("poll"):
            self.remote[rid] = receiver
            try:
                frame = await poll_frame(session, receiver)
            finally:
                self.remote.pop(rid, None)
            if frame is None:
                return _encode({"st": "aborted", "end": True})
            return _encode({"st": "ok", "end": True}, receiver.wrap(frame))
        result = session.attach_receiver(receiver)
        data, done = stream_chunk(session, receiver, result.frames)
        if result.release:
            done = True
        elif done:
            session.detach_receiver(receiver)
        else:
            self.remote[rid] = receiver
        return _encode({"st": "ok", "end": done}, data)

    async def _pull(self, session: HttpSession, header: dict) -> bytes:
        rid = str(header.get("rid"))
        receiver = self.remote.get(rid)
        if receiver is None or receiver.session is not session or session.receiver is not receiver:
            self.remote.pop(rid, None)
            return _encode({"st": "gone", "end": True})
        receiver.contact = self.loop.time()
        frames = await next_frames(session, receiver)
        receiver.contact = self.loop.time()
        if frames is None:
            self.remote.pop(rid, None)
            return _encode({"st": "gone" if receiver.ended else "aborted", "end": True})
        data, done = stream_chunk(session, receiver, frames)
        if done:
            self.remote.pop(rid, None)
            session.detach_receiver(receiver)
        return _encode({"st": "ok", "end": done}, data)

    def _end(self, header: dict) -> bytes:
        receiver = self.remote.pop(str(header.get("rid")), None)
        if receiver is not None:
            aborted = bool(header.get("aborted"))
            receiver.session.detach_receiver(receiver, aborted=aborted)
            receiver.ended = not aborted
            receiver.abort()  # a pull waiting for it returns without taking frames
        return _encode({"st": "ok", "end": True})

    # -- timers ---------------------------------------------------------------------------------

    def sweep(self, now: float) -> None:
        for call in list(self.calls.values()):
            if not call.ended and not call.aborting and call.client_gone:
                call.aborting = True
                _spawn(call.finish(aborted=True))
        silent: dict[str, list[str]] = {}
        for rid, receiver in list(self.remote.items()):
            if receiver.waiting:
                continue
            if receiver.session.receiver is not receiver:
                del self.remote[rid]  # detached meanwhile (aborted, session closed...)
                continue
            if now - receiver.contact >= PROBE_AFTER:
                silent.setdefault(receiver.node, []).append(rid)
        for node, rids in silent.items():
            if node not in self._probing:
                self._probing.add(node)
                _spawn(self._probe(node, rids))

    async def _probe(self, node: str, rids: list[str]) -> None:
        """Ask ``node`` whether it still serves ``rids``; those it does not (or a node that
        is gone or does not answer) were aborted with their client."""
        try:
            try:
                answer, _ = _decode(await self.broker.relay(node, _encode({"op": "alive", "rids": rids}),
                                                            RELAY_TIMEOUT))
                alive = set(answer.get("alive") or ())
            except (LookupError, TimeoutError, ValueError):
                alive = set()
            except BrokerUnavailable:
                return  # cannot tell; ask again later
            now = self.loop.time()
            for rid in rids:
                receiver = self.remote.get(rid)
                if receiver is None:
                    continue
                if rid in alive:
                    receiver.contact = now
                    continue
                del self.remote[rid]
                self.stats["sessions_lost_receivers"] += 1
                receiver.lost = True
                receiver.session.detach_receiver(receiver, aborted=True)
        finally:
            self._probing.discard(node)

    def describe(self) -> dict[str, Any]:
        return {"relayed_requests": len(self.calls), "remote_receivers": len(self.remote),
                "owners_cached": len(self._owners),
                **{k: v for k, v in self.stats.items() if k.startswith("sessions_")}}


_tasks: set[asyncio.Task] = set()


def _spawn(coro: Any) -> None:
    task = asyncio.get_running_loop().create_task(coro)
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)
