"""SockJS HTTP transports: xhr-polling, xhr_send, xhr-streaming, eventsource, htmlfile,
jsonp-polling and jsonp_send (sockjs-protocol sections of the same names).

A :class:`HttpSession` is the hub's connection for a SockJS session on these
transports. Its state lives in :class:`sockway.sockjs.session.Session` (no I/O); this
module is the I/O around it: one aiohttp handler per request, and at most one
*receiving* request attached to a session at a time, woken when the session has
something for it.

With a broker that shares sessions between nodes (edge.sockjs_relay), the receiving
request may have come in on another node: the session's owner then attaches a
:class:`RemoteReceiver` in its place and answers that node's pulls with the frames,
already wrapped for the transport, that a local request would have written
(:func:`poll_frame`, :func:`next_frames`, :func:`stream_chunk`); the serving node writes
them to its client (:func:`run_relayed_streaming`). The rules are the same either way:
one receiving request at a time, heartbeats, response_limit, 1002 when the client aborts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, ClassVar

from aiohttp import web

from sockway import closecodes
from sockway.hub.connection import Connection, ConnectionInfo
from sockway.hub.message import SOCKJS
from sockway.hub.trace import TRACER
from sockway.sockjs.frames import (
    EVENTSOURCE_PRELUDE,
    HEARTBEAT,
    XHR_STREAMING_PRELUDE,
    htmlfile_prelude,
    wrap_eventsource,
    wrap_htmlfile,
    wrap_jsonp,
    wrap_xhr,
)
from sockway.sockjs.session import Session

if TYPE_CHECKING:
    from sockway.edge.sockjs_relay import RelayedReceive, SessionRelay
    from sockway.hub.endpoint import Endpoint

__all__ = ["TRANSPORT_NAMES", "HttpSession", "Receiver", "RemoteReceiver", "SessionRegistry"]

log = logging.getLogger("sockway.sockjs")

TRANSPORT_NAMES = {
    "xhr": "xhr-polling",
    "xhr_streaming": "xhr-streaming",
    "eventsource": "eventsource",
    "htmlfile": "htmlfile",
    "jsonp": "jsonp-polling",
}
"""URL transport name -> the name connections report (sockjs-client's names)."""


class Receiver:
    """The receiving request currently attached to a session.

    A wake-up is never lost: one that comes while the request is not waiting (the
    session closed by the application's ``on_open``, called while the request is
    attaching, as on the ``/close`` test endpoint; or a message pushed while the open
    frame is being written) makes the next :meth:`wait` return at once.
    """

    __slots__ = ("_waiter", "_woken", "aborted", "request")

    def __init__(self, request: web.BaseRequest) -> None:
        self.request = request
        self.aborted = False
        self._waiter: asyncio.Future | None = None
        self._woken = False

    def wake(self) -> None:
        waiter = self._waiter
        if waiter is None:
            self._woken = True
        elif not waiter.done():
            waiter.set_result(True)

    def abort(self) -> None:
        self.aborted = True
        self.wake()

    @property
    def gone(self) -> bool:
        """The client closed the connection under this request."""
        transport = self.request.transport
        return transport is None or transport.is_closing()

    async def wait(self, timeout: float) -> bool:
        """Wait to be woken; True when woken, False on timeout (the caller then sends a
        heartbeat)."""
        if self._woken:
            self._woken = False
            return True
        loop = asyncio.get_running_loop()
        self._waiter = waiter = loop.create_future()
        handle = loop.call_later(timeout, _timeout, waiter)
        try:
            return await waiter
        finally:
            handle.cancel()
            self._waiter = None


def _timeout(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_result(False)


class RemoteReceiver(Receiver):
    """On the session's owner, a receiving request that another node serves: woken and
    aborted like a local one; the frames it is due go back in the answers to that
    node's pulls. ``wrap`` is its transport's wrapping, ``sent`` the bytes it has been
    given (checked against ``response_limit`` for the streaming transports)."""

    __slots__ = ("contact", "ended", "lost", "node", "rid", "sent", "session", "wrap")

    def __init__(self, session: HttpSession, rid: str, node: str, wrap: Callable[[bytes], bytes]) -> None:
        super().__init__(None)  # type: ignore[arg-type]
        self.session = session
        self.rid = rid
        self.node = node
        self.wrap = wrap
        self.sent = 0
        self.lost = False
        """The serving node no longer has the request (or is gone): the client is."""
        self.ended = False
        """The serving node ended the request without the client going away (it stops)."""
        self.contact = session.registry.loop.time()
        """When the serving node last pulled (or said the request was still there)."""

    @property
    def gone(self) -> bool:
        return self.lost

    @property
    def waiting(self) -> bool:
        """A pull of the serving node is waiting here for frames."""
        return self._waiter is not None


class HttpSession(Connection):
    __slots__ = ("_marked", "core", "receiver", "registry", "transport_name")
    encoding_key = SOCKJS

    def __init__(self, registry: SessionRegistry, session_id: str, remote: str,
                 info: ConnectionInfo | None, transport_name: str) -> None:
        super().__init__(registry.endpoint, remote, info)
        self.registry = registry
        config = registry.endpoint.config
        self.core = Session(session_id, registry.loop.time(), max_queue_bytes=config.max_session_queue)
        self.receiver: Receiver | None = None
        self._marked = False
        self.transport_name = transport_name

    def push(self, encoded: bytes) -> None:
        core = self.core
        if core.closed:
            return
        if not core.enqueue(encoded):
            self.endpoint.hub.stats.slow_consumers += 1
            self.close(closecodes.SESSION_QUEUE_FULL, "session queue full")
            return
        if self.receiver is not None and not self._marked:
            self._marked = True
            self.endpoint.hub.coalescer.mark(self)

    def flush(self, cache: dict) -> None:
        """Wake the attached request: it writes everything queued, as one frame, in one
        write (a remote one answers its node's pull with it)."""
        self._marked = False
        if self.receiver is not None:
            self.endpoint.hub.coalescer.writes += 1
            self.receiver.wake()

    def close(self, code: int = closecodes.GO_AWAY, reason: str = "Go away!") -> None:
        if self.core.close(code, reason):
            if self.receiver is not None:
                self.receiver.wake()
            # Leave groups from a later callback: close() may run inside a fan-out.
            self.registry.loop.call_soon(self.endpoint.closed, self, code, reason)

    def aborted(self) -> None:
        """The attached request's client went away (sockjs-protocol
        HandlingClose.test_abort_*): the session closes with 1002."""
        receiver = self.receiver
        self.receiver = None
        if receiver is not None:
            receiver.abort()
        if self.core.detach(self.registry.loop.time(), aborted=True):
            self.registry.loop.call_soon(
                self.endpoint.closed, self, self.core.close_code, self.core.close_reason
            )

    def attach_receiver(self, receiver: Receiver):
        """Attach a receiving request; returns the core's :class:`Attach`."""
        if self.receiver is not None and self.receiver.gone:
            self.aborted()
        result = self.core.attach(self.registry.loop.time())
        if not result.release:
            self.receiver = receiver
        if result.opened:
            self.endpoint.opened(self)
        return result

    def detach_receiver(self, receiver: Receiver, *, aborted: bool = False) -> None:
        if self.receiver is not receiver:
            return
        if aborted:
            self.aborted()
            return
        self.receiver = None
        self.core.detach(self.registry.loop.time())

    @property
    def is_open(self) -> bool:
        return not self.core.closed


class SessionRegistry:
    """The SockJS HTTP sessions of one endpoint, and their timers."""

    def __init__(self, endpoint: Endpoint, relay: SessionRelay | None = None) -> None:
        self.endpoint = endpoint
        self.loop = endpoint.hub.loop
        self.sessions: dict[str, HttpSession] = {}
        self.relay = relay
        """Set when sessions are shared between nodes: expired ones are released there."""
        endpoint.hub.add_sweeper(self.sweep)

    def get(self, session_id: str) -> HttpSession | None:
        return self.sessions.get(session_id)

    def create(self, session_id: str, remote: str, info: ConnectionInfo | None,
               transport_name: str) -> HttpSession:
        session = HttpSession(self, session_id, remote, info, transport_name)
        self.sessions[session_id] = session
        return session

    def sweep(self, now: float) -> None:
        config = self.endpoint.config
        expired = []
        for session in self.sessions.values():
            receiver = session.receiver
            if receiver is not None and receiver.gone:
                session.aborted()
            if session.core.expired(now, config.disconnect_delay):
                expired.append(session)
        for session in expired:
            del self.sessions[session.core.id]
            if self.relay is not None:
                self.relay.release(self.endpoint.prefix, session.core.id)
            if not session.core.closed:
                session.core.close(closecodes.ABNORMAL, "session timed out")
                self.endpoint.closed(session, closecodes.ABNORMAL, "session timed out")


# -- per-transport wrapping --------------------------------------------------------------


class StreamingTransport:
    """What differs between the streaming transports."""

    name: ClassVar[str]
    content_type: ClassVar[str]
    """The whole Content-Type header. sockjs-protocol compares it with the charset
    spelled ``UTF-8``; aiohttp's ``charset`` setter would lower-case it."""

    def prelude(self, request: web.BaseRequest) -> bytes:
        raise NotImplementedError

    def wrap(self, frame: bytes) -> bytes:
        raise NotImplementedError


class XhrStreaming(StreamingTransport):
    name = "xhr-streaming"
    content_type = "application/javascript; charset=UTF-8"

    def prelude(self, request):
        return XHR_STREAMING_PRELUDE

    wrap = staticmethod(wrap_xhr)


class EventSource(StreamingTransport):
    name = "eventsource"
    content_type = "text/event-stream"

    def prelude(self, request):
        return EVENTSOURCE_PRELUDE

    wrap = staticmethod(wrap_eventsource)


class HtmlFile(StreamingTransport):
    name = "htmlfile"
    content_type = "text/html; charset=UTF-8"

    def __init__(self, callback: str) -> None:
        self.callback = callback

    def prelude(self, request):
        return htmlfile_prelude(self.callback)

    wrap = staticmethod(wrap_htmlfile)


def polling_wrapper(transport: str, callback: bytes | None) -> Callable[[bytes], bytes]:
    if transport == "jsonp":
        assert callback is not None
        return lambda frame: wrap_jsonp(frame, callback)
    return wrap_xhr


def frame_wrapper(transport: str, callback: str | None) -> Callable[[bytes], bytes]:
    """The wrapping of frames for a receiving transport (URL name)."""
    if transport == "jsonp":
        return partial(wrap_jsonp, callback=(callback or "").encode())
    if transport == "eventsource":
        return wrap_eventsource
    if transport == "htmlfile":
        return wrap_htmlfile
    return wrap_xhr


async def poll_frame(session: HttpSession, receiver: Receiver) -> bytes | None:
    """One poll's frame (open, messages, close or heartbeat), waiting up to
    heartbeat_delay for one; None if the request was aborted meanwhile."""
    result = session.attach_receiver(receiver)
    if result.frames:
        frame = result.frames[0]
        if not result.release:
            session.detach_receiver(receiver)
    else:
        woken = await receiver.wait(session.endpoint.config.heartbeat_delay)
        if receiver.aborted:
            return None  # the client is gone; nothing will read this
        frame = session.core.take_one() if woken else None
        if frame is None:
            frame = HEARTBEAT
        session.detach_receiver(receiver)
    session.core.sent(session.registry.loop.time())
    if TRACER.active:
        TRACER.sockjs(session, "out", frame)
    return frame


async def run_polling(session: HttpSession, request: web.BaseRequest, response: web.Response,
                      wrap: Callable[[bytes], bytes]) -> web.Response:
    """One poll: answer with one frame (open, messages, close or heartbeat)."""
    frame = await poll_frame(session, Receiver(request))
    if frame is None:
        return response
    body = wrap(frame)
    session.endpoint.bytes_out += len(body)
    response.body = body
    return response


# -- the owner's side of a receiving request served by another node ------------------------


def stream_chunk(session: HttpSession, receiver: RemoteReceiver, frames: list[bytes]) -> tuple[bytes, bool]:
    """``frames`` wrapped for the remote streaming request, and whether its response
    must end after them (a close frame, or response_limit reached), as
    :func:`run_streaming` decides for a local one."""
    out = []
    done = False
    wrap = receiver.wrap
    for frame in frames:
        if TRACER.active:
            TRACER.sockjs(session, "out", frame)
        out.append(wrap(frame))
        if frame[:1] == b"c":
            done = True
    data = b"".join(out)
    receiver.sent += len(data)
    if frames:
        session.core.sent(session.registry.loop.time())
    return data, done or receiver.sent >= session.endpoint.config.response_limit


async def next_frames(session: HttpSession, receiver: RemoteReceiver) -> list[bytes] | None:
    """The next frames due to an attached remote streaming request: what is queued, or
    a heartbeat after heartbeat_delay; None if it was aborted meanwhile."""
    delay = session.endpoint.config.heartbeat_delay
    while True:
        woken = await receiver.wait(delay)
        if receiver.aborted:
            return None
        frames = session.core.pending_frames() if woken else [HEARTBEAT]
        if frames:
            return frames


async def run_streaming(session: HttpSession, request: web.BaseRequest,
                        response: web.StreamResponse, transport: StreamingTransport) -> web.StreamResponse:
    """A streaming response: prelude, then frames until the response limit, a close
    frame, or the client going away.

    Over HTTP/1.0 there is no chunked encoding and the length is unknown, so the
    connection is closed after the response even if the client asked for keep-alive:
    that is how the client sees the end of the body (sockjs-protocol
    Http10.test_streaming). aiohttp would otherwise keep it open."""
    config = session.endpoint.config
    if request.version < (1, 1):
        response.force_close()
    await response.prepare(request)
    await response.write(transport.prelude(request))
    receiver = Receiver(request)
    result = session.attach_receiver(receiver)
    frames = result.frames
    limit = config.response_limit
    sent = 0
    aborted = False
    try:
        while True:
            done = result.release
            if frames:
                # Queued messages and a close frame after them: one write.
                chunks = []
                for frame in frames:
                    if TRACER.active:
                        TRACER.sockjs(session, "out", frame)
                    chunks.append(transport.wrap(frame))
                    if frame[:1] == b"c":
                        done = True
                data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                await response.write(data)
                sent += len(data)
                session.endpoint.bytes_out += len(data)
                session.core.sent(session.registry.loop.time())
            if done or sent >= limit:
                break
            woken = await receiver.wait(config.heartbeat_delay)
            if receiver.aborted:
                aborted = True
                break
            frames = session.core.pending_frames() if woken else []
            if not frames and not woken:
                frames = [HEARTBEAT]
    except (ConnectionError, RuntimeError):
        aborted = True
    finally:
        if not result.release:
            session.detach_receiver(receiver, aborted=aborted)
    if not aborted:
        with contextlib.suppress(ConnectionError, RuntimeError):
            await response.write_eof()
    return response


# -- the serving node's side of a request relayed to the session's owner --------------------


async def run_relayed_streaming(call: RelayedReceive, request: web.BaseRequest, response: web.StreamResponse,
                                transport: StreamingTransport, data: bytes, end: bool,
                                endpoint: Endpoint) -> web.StreamResponse:
    """A streaming response for a session owned by another node: the prelude, then what
    the owner's answers carry (``data``, then each pull's), until the owner ends it
    (close frame, response_limit) or the client goes away (the owner is told: 1002)."""
    from sockway.edge.sockjs_relay import SESSION_LOST

    if request.version < (1, 1):
        response.force_close()
    aborted = False
    try:
        await response.prepare(request)
        await response.write(transport.prelude(request))
        while True:
            if data:
                await response.write(data)
                endpoint.bytes_out += len(data)
            if end:
                break
            status, end, data = await call.pull()
            if status == "aborted":
                aborted = True
                break
            if status in ("gone", "stopping"):
                break  # ended cleanly: the client opens its next stream, on another node
            if status != "ok":
                # The owner is gone or cannot be reached: this session cannot go on.
                data, end = transport.wrap(SESSION_LOST), True
    except (ConnectionError, RuntimeError):
        aborted = True
    except asyncio.CancelledError:
        # The server is stopping: the owner detaches the request, the session lives on.
        call.finish_soon(aborted=False)
        raise
    finally:
        if not call.ended:
            await call.finish(aborted=aborted)
    if not aborted:
        with contextlib.suppress(ConnectionError, RuntimeError):
            await response.write_eof()
    return response
