"""The Redis engine: any number of gateway nodes share channels, history and presence
through one Redis (7.0 or newer; redis-py's asyncio client).

Selected with ``[broker] url = "redis://127.0.0.1:6379/0"``; engine options go in the
query string (they are removed before the URL reaches redis-py)::

    redis://127.0.0.1:6379/0?prefix=sockway&presence_ttl=30&meta_ttl=604800&events=on

``prefix`` (``sockway``) starts every key and channel; ``presence_ttl`` (30 s) is how long
a node's presence entries outlive it; ``meta_ttl`` (7 days) how long a channel's offset,
epoch and history are kept after its last publication; ``events`` (off) sends application
events to the stream ``<prefix>:events`` (or the key given), capped by ``events_maxlen``
(100000, approximate); ``commands`` (on) runs commands from the list and the pub/sub
channel ``<prefix>:commands``; ``sessions`` (on) shares SockJS HTTP sessions between the
nodes (any node serves any request of a session: edge.sockjs_relay), ``session_ttl``
(30 s) is how long a session's owner record outlives its node.

Keys, for channel ``ch`` (the ``{ch}`` hash tag keeps one channel's keys in one Redis
Cluster slot, as Lua scripts need)::

    <prefix>:{ch}:m   hash: "o" last offset, "e" epoch, "b" bytes of history
    <prefix>:{ch}:s   stream of the channel's history, entry id "<offset>-0", fields "p"
                      (the publication) and "c" (what it counts for in history bytes)
    <prefix>:{ch}:p   hash: connection id -> presence info (JSON)
    <prefix>:{ch}:z   sorted set: connection id -> expiry (ms, Redis clock)
    <prefix>:s:<endpoint>/<session>   string: the node owning a SockJS session (PX session_ttl)

What each guarantee rests on:

* **Offsets and order.** A publish is one Lua script (atomic in Redis): HINCRBY the
  offset, XADD to the history stream (then the oldest entries are dropped beyond the
  history size and ``history_max_bytes``; PEXPIRE for the TTL), PUBLISH the encoded
  publication. Redis runs scripts one at a time, so offsets are
  gapless, and PUBLISHes of one channel leave Redis in offset order. Every node reads
  all its channels on one pub/sub connection, so it receives them in that order.
* **Epochs.** The epoch is created with the channel's state (the meta hash). When that
  state is lost (expired, evicted, a Redis restart without persistence), the next
  publish or history query creates a new epoch and drops any stale stream, so a client
  holding an old position gets ``recovered: false`` rather than a wrong answer.
* **No gap on subscribe.** A node subscribes to a channel's pub/sub channel and waits for
  Redis' confirmation before it reads history (:meth:`RedisBroker.history` waits for
  it); the hub buffers live publications meanwhile and drops the ones history already
  covered (hub.channels).
* **Ordered writes.** Publishes and presence changes of one node go through one queue,
  pipelined in batches on one connection: they run in Redis in the order they were
  called, and one client's publications keep their order.
* **Exactly once per subscriber.** A node delivers a publication to its local subscribers
  once: it remembers the last offset it delivered per channel and drops duplicates; a
  gap (an offset skipped, or the pub/sub connection lost and re-established) is filled
  from the history stream before anything newer is delivered. What the stream no longer
  holds (no history on the channel, or trimmed) is lost for live subscribers; their
  clients see the offset jump and can ask for history.
* **SockJS sessions.** The node that opens a session claims it with ``SET key node NX PX
  ttl GET`` (one round trip, atomic: two nodes racing for one session agree on the
  winner), refreshes its records every ``session_ttl / 3`` (re-creating those lost in
  an outage, unless another node took the key meanwhile) and deletes each one (if still
  its own) when the session ends. Requests relayed to the owner and its answers travel on
  the nodes' control channels ``<prefix>:n:<node>``, as forwarded commands do; a node
  answers requests in the order they arrive (one pub/sub connection), and a PUBLISH that
  reaches no subscriber tells at once that the node is gone.
* **Presence.** Each node re-asserts its own entries every ``presence_ttl / 3`` seconds
  (re-adding them after a Redis restart); an entry not refreshed for ``presence_ttl``
  is removed by the next sweep (every node sweeps the channels it has members in) or
  read, which publishes its ``leave`` once (the sweep is a script). Join/leave go
  through the channel's pub/sub channel to every node; a node tells its own subscribers
  about its own connections at once, as the memory engine does.

When Redis goes away, nodes keep their clients; ``ready`` turns false (/readyz answers
503); publishes, history and presence fail with :class:`BrokerUnavailable` (503 on the
API, ``unavailable`` to channel clients); the node reconnects with backoff (0.1 s
doubling to 5 s), subscribes again, and fills each channel's gap from its stream.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import itertools
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from sockway.brokers.base import (
    ENTRY_OVERHEAD,
    Broker,
    BrokerUnavailable,
    HistoryPolicy,
    HistoryResult,
    Publication,
    StreamPosition,
    as_data,
    data_size,
    new_epoch,
    newest_within,
    wait_subscribed,
)
from sockway.brokers.gapfill import GapFiller
from sockway.brokers.sequencer import DELIVER, EPOCH, Gap, Sequencer
from sockway.brokers.urls import TRUE, events_on, split_options
from sockway.brokers.wire import decode_json, decode_publication, publication_body
from sockway.jsonutil import dumps

if TYPE_CHECKING:
    from sockway.bridge.events import EventQueue

__all__ = ["RedisBroker", "RedisEventStream", "events_key"]

log = logging.getLogger("sockway.redis")

BATCH = 500
"""Queued writes sent in one pipeline at most."""
BACKOFF_MIN, BACKOFF_MAX = 0.1, 5.0
LEASE_MS = 3000
"""How long the node that reads the pub/sub command channel holds that role without
renewing it (renewed every second)."""


def events_key(options: dict[str, str]) -> str | None:
    """The stream application events go to, from the engine's options: ``events=on``
    gives ``<prefix>:events``, ``events=<key>`` that key; None when events are off."""
    if not events_on(options):
        return None
    events = options["events"]
    return f"{options['prefix']}:events" if events.lower() in TRUE else events


def _unavailable(exc: BaseException) -> BrokerUnavailable:
    return BrokerUnavailable(f"Redis: {exc}" if str(exc) else f"Redis: {type(exc).__name__}")


NETWORK_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError, asyncio.TimeoutError)

# -- scripts ----------------------------------------------------------------------------------

_STATE = """
local epoch = redis.call('HGET', KEYS[1], 'e')
if not epoch then
  epoch = ARGV[1]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'e', epoch, 'o', 0)
end
"""
"""Ensure the channel's state exists (a new epoch when it was created or lost). KEYS: meta,
stream; ARGV[1]: the epoch to use if new."""

PUBLISH = _STATE + """
local offset = redis.call('HINCRBY', KEYS[1], 'o', 1)
local msg = '{"o":' .. offset .. ',"e":"' .. epoch .. '",' .. ARGV[3] .. '}'
local size = tonumber(ARGV[4])
if size > 0 then
  local budget = tonumber(ARGV[7])
  local bytes = 0
  if redis.call('EXISTS', KEYS[2]) == 1 then
    bytes = tonumber(redis.call('HGET', KEYS[1], 'b') or '0')
  end
  redis.call('XADD', KEYS[2], offset .. '-0', 'p', msg, 'c', ARGV[8])
  bytes = bytes + tonumber(ARGV[8])
  local count = redis.call('XLEN', KEYS[2])
  while count > 0 and (count > size or (budget > 0 and bytes > budget)) do
    local oldest = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)[1]
    redis.call('XDEL', KEYS[2], oldest[1])
    bytes = bytes - tonumber(oldest[2][4] or '0')
    count = count - 1
  end
  redis.call('HSET', KEYS[1], 'b', math.max(bytes, 0))
  redis.call('PEXPIRE', KEYS[2], ARGV[5])
end
redis.call('PEXPIRE', KEYS[1], ARGV[6])
redis.call('PUBLISH', ARGV[2], 'p' .. msg)
return {offset, epoch}
"""
"""ARGV: new epoch, pub/sub channel, body (wire.publication_body), history size, stream
TTL (ms), meta TTL (ms), history bytes (0: no bound), this entry's cost (base.entry_cost).
The stream's entries carry their cost (field ``c``), and the meta hash the sum (``b``,
0 when the stream is gone), so that trimming by bytes costs one XRANGE per entry
dropped. Returns {offset, epoch}."""

HISTORY = """
local epoch = redis.call('HGET', KEYS[1], 'e')
if not epoch then
  if ARGV[1] == '' then
    return {0, '', {}}
  end
  epoch = ARGV[1]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'e', epoch, 'o', 0)
end
local offset = tonumber(redis.call('HGET', KEYS[1], 'o'))
redis.call('PEXPIRE', KEYS[1], ARGV[4])
local entries = {}
if ARGV[2] == 'after' then
  entries = redis.call('XRANGE', KEYS[2], ARGV[3], '+')
elseif ARGV[2] == 'last' then
  entries = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', ARGV[3])
elseif ARGV[2] == 'all' then
  entries = redis.call('XRANGE', KEYS[2], '-', '+')
end
return {offset, epoch, entries}
"""
"""ARGV: new epoch ("": create nothing, answer offset 0 and epoch "" for a channel that
has no state), mode (after | last | all | none), its argument (first id | count), meta
TTL (ms). Returns {offset, epoch, entries}."""

RESET = """
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[1], 'e', ARGV[1])
local offset = redis.call('HGET', KEYS[1], 'o')
if not offset then
  offset = 0
  redis.call('HSET', KEYS[1], 'o', 0)
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {tonumber(offset), ARGV[1]}
"""

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

JOIN = _NOW + """
local ttl = tonumber(ARGV[1])
for i = 3, #ARGV, 3 do
  local added = redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  redis.call('ZADD', KEYS[2], now + ttl, ARGV[i])
  if added == 1 then
    redis.call('PUBLISH', ARGV[2], ARGV[i + 2])
  end
end
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('PEXPIRE', KEYS[2], ttl)
return 1
"""
"""Join, or refresh, members. KEYS: presence hash, expiry zset. ARGV: ttl (ms), pub/sub
channel, then (conn, info, join message) triples. A member that is new (or was lost)
is announced."""

LEAVE = """
redis.call('ZREM', KEYS[2], ARGV[1])
if redis.call('HDEL', KEYS[1], ARGV[1]) == 1 then
  redis.call('PUBLISH', ARGV[2], ARGV[3])
end
return 1
"""

SWEEP = _NOW + """
local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
for _, conn in ipairs(gone) do
  redis.call('ZREM', KEYS[2], conn)
  if redis.call('HDEL', KEYS[1], conn) == 1 then
    redis.call('PUBLISH', ARGV[1], 'l{"c":' .. cjson.encode(conn) .. '}')
  end
end
if ARGV[2] == 'get' then
  return redis.call('HGETALL', KEYS[1])
end
return #gone
"""
"""Remove expired members (announcing each leave once), then optionally read them all.
ARGV: pub/sub channel, "get" or "sweep"."""

LEASE = """
local holder = redis.call('GET', KEYS[1])
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

SESSION = """
local owner = redis.call('GET', KEYS[1])
if not owner or owner == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""
"""Refresh (or re-create) a session record of this node. ARGV: node id, TTL (ms).
Returns 0 when another node holds the key."""


class _Script:
    """A Lua script run with EVALSHA, loaded again when Redis has forgotten it (a restart)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()


_SCRIPTS = {name: _Script(src) for name, src in {
    "publish": PUBLISH, "history": HISTORY, "reset": RESET, "join": JOIN, "leave": LEAVE,
    "sweep": SWEEP, "lease": LEASE, "release": RELEASE, "session": SESSION}.items()}


class _Write:
    __slots__ = ("args", "finish", "future", "keys", "script")

    def __init__(self, script: _Script, keys: list, args: list, future: asyncio.Future,
                 finish: Callable[[Any], Any] | None) -> None:
        self.script = script
        self.keys = keys
        self.args = args
        self.future = future
        self.finish = finish


POOL_SIZE = 64
"""Connections to Redis for commands, per node (plus one for pub/sub and one for
blocking reads)."""


class RedisBroker(Broker):
    name = "redis"

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url, self.options = split_options(url)
        opts = self.options
        self.prefix = opts["prefix"]
        self.presence_ttl = float(opts["presence_ttl"])
        self.meta_ttl_ms = int(float(opts["meta_ttl"]) * 1000)
        self.timeout = float(opts["timeout"])
        kwargs = {"socket_connect_timeout": float(opts["connect_timeout"]),
                  "socket_timeout": self.timeout, "socket_keepalive": True,
                  "retry": Retry(NoBackoff(), 0), "decode_responses": False}
        # Commands; no hidden retries: a publish retried after a lost answer could run twice.
        # A blocking pool: a burst of subscribes (each reads history) waits for a free
        # connection instead of failing with "Too many connections".
        pool = aioredis.BlockingConnectionPool.from_url(self.url, max_connections=POOL_SIZE,
                                                        timeout=self.timeout, **kwargs)
        self.redis = aioredis.Redis(connection_pool=pool)
        # The pub/sub connection reads without a socket timeout (silence is normal), and a
        # PING every few seconds finds a dead peer.
        self._psclient = aioredis.from_url(self.url, **{**kwargs, "socket_timeout": None,
                                                         "health_check_interval": 5})
        # Blocking reads (BRPOP on the command list) get their own connection.
        self._blocking = aioredis.from_url(self.url, **{**kwargs, "socket_timeout": self.timeout + 5})
        self._ctl = f"{self.prefix}:n:"
        self._cmd_key = f"{self.prefix}:commands"
        self._lease_key = f"{self.prefix}:commands:reader"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task] = []
        self._stopping = False
        self._connected = False
        self._ps: Any = None
        self._interest: set[str] = set()
        self._pending: dict[str, collections.deque[asyncio.Future]] = {}
        self._sub_ops: collections.deque[tuple[str, str]] = collections.deque()
        self._sub_wakeup = asyncio.Event()
        self.stats = collections.Counter()
        self._seq = Sequencer(ordered=True, stats=self.stats)
        """Offsets delivered, duplicates dropped, gaps filled (brokers/sequencer.py):
        ordered, since every node reads all its channels on one pub/sub connection."""
        self._gaps = GapFiller(self._seq, self._read_gap, lambda pub: self.on_publication(pub),
                               (0.1, 0.5, 1.0), log)
        self._writes: collections.deque[_Write] = collections.deque()
        self._write_wakeup = asyncio.Event()
        self._members: dict[str, dict[str, tuple[bytes, bytes]]] = {}
        self._replies: dict[int, asyncio.Future] = {}
        self._request_ids = itertools.count(1)
        self._cmd_reader = False
        self._cmd_queue: asyncio.Queue[bytes] = asyncio.Queue()
        self._connected_once = asyncio.Event()
        self.session_ttl = float(opts["session_ttl"])
        self._owned: set[str] = set()
        """SockJS sessions this node owns (their records are refreshed)."""
        self._publishes: collections.deque[tuple[str, bytes, asyncio.Future]] = collections.deque()
        self._publish_wakeup = asyncio.Event()

    # -- names ---------------------------------------------------------------------------

    def _keys(self, channel: str) -> list[str]:
        return [f"{self.prefix}:{{{channel}}}:m", f"{self.prefix}:{{{channel}}}:s"]

    def _pkeys(self, channel: str) -> list[str]:
        return [f"{self.prefix}:{{{channel}}}:p", f"{self.prefix}:{{{channel}}}:z"]

    def _chan(self, channel: str) -> str:
        return f"{self.prefix}:c:{channel}"

    def _node_chan(self, node: str) -> str:
        return self._ctl + node

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Connect (waiting at most ``connect_timeout`` for the first connection; the node
        starts anyway, not ready, and keeps trying)."""
        if not self.node_id:
            self.node_id = os.urandom(4).hex()
        self._loop = asyncio.get_running_loop()
        loop = self._loop
        self._tasks = [loop.create_task(self._pubsub_loop()), loop.create_task(self._sub_writer()),
                       loop.create_task(self._write_loop()), loop.create_task(self._presence_loop())]
        if self.shares_sessions:
            self._tasks += [loop.create_task(self._session_loop()), loop.create_task(self._publish_loop())]
        if self.options["commands"].lower() in TRUE:
            self._tasks += [loop.create_task(self._command_list_loop()),
                            loop.create_task(self._lease_loop()),
                            loop.create_task(self._command_runner())]
        try:
            await asyncio.wait_for(self._connected_once.wait(), float(self.options["connect_timeout"]) + 1)
        except TimeoutError:
            log.warning("Redis at %s is not reachable; starting not ready, retrying", self._where())

    async def stop(self) -> None:
        self._stopping = True
        if self._cmd_reader:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._eval(_SCRIPTS["release"], [self._lease_key], [self.node_id]), 1)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._fail_pending(BrokerUnavailable("stopped"))
        for client in (self.redis, self._psclient, self._blocking):
            with contextlib.suppress(Exception):
                await client.aclose()

    def _where(self) -> str:
        parts = urlsplit(self.url)
        return f"{parts.hostname}:{parts.port or 6379}"

    @property
    def ready(self) -> bool:
        return self._connected

    def describe(self) -> dict:
        return {"engine": self.name, "ready": self.ready, "redis": self._where(), "node": self.node_id,
                "channels": len(self._interest), "command_reader": self._cmd_reader,
                "sessions_owned": len(self._owned),
                **{k: v for k, v in self.stats.items()}}

    async def _eval(self, script: _Script, keys: list, args: list, retry: bool = False) -> Any:
        """Run a script. ``retry``: once more on a connection error (only for scripts
        that may safely run twice: reads, the lease)."""
        for attempt in (1, 2):
            try:
                try:
                    return await self.redis.evalsha(script.sha, len(keys), *keys, *args)
                except NoScriptError:
                    return await self.redis.eval(script.source, len(keys), *keys, *args)
            except NETWORK_ERRORS as exc:
                if not retry or attempt == 2:
                    raise _unavailable(exc) from None
        raise AssertionError("unreachable")

    # -- the pub/sub connection ------------------------------------------------------------

    async def _pubsub_loop(self) -> None:
        backoff = BACKOFF_MIN
        while not self._stopping:
            ps = self._psclient.pubsub()
            try:
                await ps.subscribe(self._node_chan(self.node_id))
                self._ps = ps
                self._sub_ops.clear()
                for channel in self._interest:
                    self._queue_sub("subscribe", channel)
                if self._cmd_reader:
                    self._sub_ops.append(("subscribe", self._cmd_key))
                self._sub_wakeup.set()
                while True:
                    message = await ps.get_message(timeout=1.0)
                    if message is not None and self._dispatch(message):
                        backoff = BACKOFF_MIN
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not self._stopping:
                    log.warning("Redis pub/sub connection lost (%s); reconnecting in %.1fs",
                                exc or type(exc).__name__, backoff)
            finally:
                self._ps = None
                if self._connected:
                    self.stats["disconnects"] += 1
                self._connected = False
                self._fail_pending(BrokerUnavailable("the connection to Redis was lost"))
                with contextlib.suppress(Exception):
                    await ps.aclose()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)

    def subscribed(self, channel: str, timeout: float = 5.0) -> Awaitable[bool]:
        return wait_subscribed(self._pending, self._interest, channel, timeout)

    def _queue_sub(self, verb: str, channel: str) -> asyncio.Future | None:
        if self._ps is None:
            return None
        future: asyncio.Future | None = None
        if verb == "subscribe":
            future = asyncio.get_running_loop().create_future()
            future.add_done_callback(_consume)
            self._pending.setdefault(channel, collections.deque()).append(future)
        self._sub_ops.append((verb, self._chan(channel)))
        self._sub_wakeup.set()
        return future

    async def _sub_writer(self) -> None:
        """Sends SUBSCRIBE/UNSUBSCRIBE in the order they were asked for, batched."""
        while True:
            await self._sub_wakeup.wait()
            self._sub_wakeup.clear()
            while self._sub_ops and self._ps is not None:
                ps = self._ps
                verb, first = self._sub_ops.popleft()
                names = [first]
                while self._sub_ops and self._sub_ops[0][0] == verb and len(names) < 1000:
                    names.append(self._sub_ops.popleft()[1])
                try:
                    await (ps.subscribe(*names) if verb == "subscribe" else ps.unsubscribe(*names))
                except Exception as exc:  # the reader sees the broken connection too
                    log.debug("pub/sub %s failed: %s", verb, exc)
                    break

    def _fail_pending(self, exc: BaseException) -> None:
        pending, self._pending = self._pending, {}
        for futures in pending.values():
            for future in futures:
                if not future.done():
                    future.set_exception(exc)
        for future in self._replies.values():
            if not future.done():
                future.set_exception(BrokerUnavailable(str(exc)))

    def _dispatch(self, message: dict) -> bool:
        kind = message["type"]
        name = message["channel"]
        name = name.decode() if isinstance(name, bytes) else name
        if kind == "message":
            data = message["data"]
            if name.startswith(self._chan("")):
                self._on_channel_message(name[len(self._chan("")):], data)
            elif name == self._cmd_key:
                self._cmd_queue.put_nowait(data)
            elif name.startswith(self._ctl):
                self._on_control(data)
            return False
        if kind == "subscribe":
            if name == self._node_chan(self.node_id):
                if not self._connected:
                    self.stats["connects"] += 1
                    log.info("connected to Redis at %s (node %s)", self._where(), self.node_id)
                    if self._connected_once.is_set():
                        # Idle connections pooled before the loss may be dead: drop them,
                        # so that no command fails on one now that Redis is back. Not the
                        # ones in use: they are alive (a command is running on them) or
                        # fail their command by themselves; closing them here would fail
                        # a publish that Redis is running fine, when only the pub/sub
                        # connection was lost.
                        for client in (self.redis, self._blocking):
                            _spawn(client.connection_pool.disconnect(inuse_connections=False))
                self._connected = True
                self._connected_once.set()
                return True
            if name.startswith(self._chan("")):
                channel = name[len(self._chan("")):]
                futures = self._pending.get(channel)
                if futures:
                    future = futures.popleft()
                    if not futures:
                        del self._pending[channel]
                    if not future.done():
                        future.set_result(None)
                # Resubscribed after a lost connection: fill what was missed meanwhile.
                gap = self._seq.resume(channel)
                if gap is not None:
                    self._gaps.start(gap)
        return False

    # -- channels ----------------------------------------------------------------------------

    def _on_channel_message(self, channel: str, data: bytes) -> None:
        tag = data[:1]
        try:
            if tag == b"p":
                pub = decode_publication(channel, data[1:])
                decision = self._seq.offer(pub)
                if decision is DELIVER or decision is EPOCH:
                    self.on_publication(pub)
                elif isinstance(decision, Gap):
                    self._gaps.start(decision)
            elif tag in (b"j", b"l"):
                obj = decode_json(data[1:])
                conn = obj["c"]
                if conn.partition(".")[0] == self.node_id:
                    return  # announced locally when it happened
                self.on_presence(channel, conn, (obj.get("i") or {}) if tag == b"j" else None)
        except Exception:
            log.exception("bad message on channel %s", channel)

    async def _read_gap(self, gap: Gap) -> list[tuple[Publication, None]]:
        """What the channel's stream holds after the gap's start."""
        channel, (offset, epoch, _cursor) = gap.channel, gap.since
        _offset, found, entries = await self._read(channel, "after", f"{offset + 1}-0")
        if found != epoch:
            # The channel's state was lost and started again (a Redis restart without
            # persistence): what its new epoch holds is what was missed.
            _offset, found, entries = await self._read(channel, "all", "")
        return [(decode_publication(channel, fields[1]), None) for _id, fields in entries]

    def publish(self, channel: str, data: Any, policy: HistoryPolicy,
                info: dict | None = None) -> Awaitable[Publication]:
        now = time.time()
        data = as_data(data)
        stream_ttl = int(policy.ttl * 1000) if policy.ttl else self.meta_ttl_ms
        cost = data_size(data) + ENTRY_OVERHEAD
        args = [new_epoch(), self._chan(channel), publication_body(data, info, now), policy.size,
                stream_ttl, max(self.meta_ttl_ms, stream_ttl), policy.max_bytes, cost]

        def finish(result: list) -> Publication:
            offset, epoch = result
            return Publication(channel, int(offset), _text(epoch), data, info, now)

        return self._write(_SCRIPTS["publish"], self._keys(channel), args, finish)

    def interest(self, channel: str, on: bool) -> None:
        """Subscribes (or not) on the pub/sub connection; :meth:`history` waits for the
        confirmation, so nothing here needs awaiting."""
        if on:
            if channel in self._interest:
                return None
            self._interest.add(channel)
            self._seq.follow(channel)
            self._queue_sub("subscribe", channel)
            return None
        if channel not in self._interest:
            return None
        self._interest.discard(channel)
        self._seq.unfollow(channel)
        self._queue_sub("unsubscribe", channel)
        return None

    async def _read(self, channel: str, mode: str, arg: Any) -> tuple[int, str, list]:
        pending = self._pending.get(channel)
        if pending:
            # Read history only once live publications reach this node (no gap between).
            try:
                await asyncio.wait_for(asyncio.shield(pending[-1]), self.timeout)
            except TimeoutError:
                raise BrokerUnavailable("Redis did not confirm a subscription in time") from None
        # State is created for channels someone here listens to, not for any name queried
        # (as memory.py does): an unknown channel answers (0, "").
        epoch = new_epoch() if channel in self._interest else ""
        offset, epoch, entries = await self._eval(
            _SCRIPTS["history"], self._keys(channel), [epoch, mode, arg, self.meta_ttl_ms], retry=True)
        offset, epoch = int(offset), _text(epoch)
        self._seq.start_at(channel, offset, epoch)  # where subscribers here start
        return offset, epoch, entries

    def history(self, channel: str, policy: HistoryPolicy, since: StreamPosition | None = None,
                limit: int | None = None) -> Awaitable[HistoryResult]:
        return self._history(channel, policy, since, limit)

    async def _history(self, channel: str, policy: HistoryPolicy, since: StreamPosition | None,
                       limit: int | None) -> HistoryResult:
        if since is not None:
            mode, arg = "after", f"{since.offset + 1}-0"
        elif limit == 0:
            mode, arg = "none", ""
        elif limit is not None:
            mode, arg = "last", limit
        else:
            mode, arg = "all", ""
        offset, epoch, entries = await self._read(channel, mode, arg)
        if mode == "last":
            entries = list(reversed(entries))
        position = StreamPosition(offset, epoch)
        pubs = [decode_publication(channel, fields[1]) for _id, fields in entries]
        # The stream holds at most policy.size entries and policy.max_bytes (the publish
        # script trims it); a smaller bound set since, or entries older than the TTL,
        # are dropped here as memory.py drops them.
        pubs = newest_within(pubs[-policy.size:], policy.max_bytes) if policy.size else []
        if policy.ttl:
            horizon = time.time() - policy.ttl
            pubs = [p for p in pubs if p.time >= horizon]
        if since is None:
            return HistoryResult(pubs, position, True)
        if since.epoch != epoch or since.offset > offset:
            return HistoryResult([], position, False)
        complete = since.offset >= offset or (bool(pubs) and pubs[0].offset == since.offset + 1)
        if limit is not None and len(pubs) > limit:
            pubs = pubs[:limit]
            complete = False
        return HistoryResult(pubs, position, complete)

    def reset_history(self, channel: str) -> Awaitable[StreamPosition]:
        async def run() -> StreamPosition:
            offset, epoch = await self._eval(_SCRIPTS["reset"], self._keys(channel),
                                             [new_epoch(), self.meta_ttl_ms])
            return StreamPosition(int(offset), _text(epoch))

        return run()

    # -- ordered writes --------------------------------------------------------------------

    def _write(self, script: _Script, keys: list, args: list,
               finish: Callable[[Any], Any] | None = None) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        future.add_done_callback(_consume)
        self._writes.append(_Write(script, keys, args, future, finish))
        self._write_wakeup.set()
        return future

    async def _write_loop(self) -> None:
        """One pipeline at a time, in call order: the order of this node's writes."""
        while True:
            await self._write_wakeup.wait()
            self._write_wakeup.clear()
            while self._writes:
                batch = [self._writes.popleft() for _ in range(min(BATCH, len(self._writes)))]
                await self._run_batch(batch)

    async def _run_batch(self, batch: list[_Write]) -> None:
        for _attempt in range(2):
            pipe = self.redis.pipeline(transaction=False)
            for write in batch:
                pipe.evalsha(write.script.sha, len(write.keys), *write.keys, *write.args)
            try:
                results = await pipe.execute(raise_on_error=False)
            except NETWORK_ERRORS as exc:
                for write in batch:
                    if not write.future.done():
                        write.future.set_exception(_unavailable(exc))
                return
            except Exception as exc:
                for write in batch:
                    if not write.future.done():
                        write.future.set_exception(exc)
                return
            retry = []
            for write, result in zip(batch, results, strict=True):
                if isinstance(result, NoScriptError):
                    retry.append(write)  # it did not run: safe to run again, in order
                elif isinstance(result, Exception):
                    write.future.set_exception(result)
                else:
                    try:
                        write.future.set_result(write.finish(result) if write.finish else result)
                    except Exception as exc:
                        write.future.set_exception(exc)
            if not retry:
                return
            try:
                for script in {w.script.sha: w.script for w in retry}.values():
                    await self.redis.script_load(script.source)
            except NETWORK_ERRORS as exc:
                for write in retry:
                    write.future.set_exception(_unavailable(exc))
                return
            batch = retry
        for write in batch:
            if not write.future.done():
                write.future.set_exception(BrokerUnavailable("Redis keeps forgetting scripts"))

    # -- presence --------------------------------------------------------------------------

    def _presence_ttl_ms(self) -> int:
        return int(self.presence_ttl * 1000)

    def presence_join(self, channel: str, conn_id: str, info: dict) -> Awaitable[None]:
        members = self._members.setdefault(channel, {})
        new = conn_id not in members
        info_json = dumps(info)
        members[conn_id] = (info_json, b'j{"c":' + dumps(conn_id) + b',"i":' + info_json + b"}")
        if new:
            self.on_presence(channel, conn_id, info)
        return self._write(_SCRIPTS["join"], self._pkeys(channel),
                           [self._presence_ttl_ms(), self._chan(channel), conn_id, *members[conn_id]])

    def presence_leave(self, channel: str, conn_id: str) -> Awaitable[None] | None:
        members = self._members.get(channel)
        if members is None or members.pop(conn_id, None) is None:
            return None
        if not members:
            del self._members[channel]
        self.on_presence(channel, conn_id, None)
        return self._write(_SCRIPTS["leave"], self._pkeys(channel),
                           [conn_id, self._chan(channel), b'l{"c":' + dumps(conn_id) + b"}"])

    def presence(self, channel: str) -> Awaitable[dict[str, dict]]:
        async def run() -> dict[str, dict]:
            flat = await self._eval(_SCRIPTS["sweep"], self._pkeys(channel), [self._chan(channel), "get"],
                                    retry=True)
            return {_text(flat[i]): decode_json(flat[i + 1]) for i in range(0, len(flat), 2)}

        return run()

    async def _presence_loop(self) -> None:
        """Every presence_ttl / 3: re-assert this node's members, sweep expired ones."""
        while True:
            await asyncio.sleep(self.presence_ttl / 3)
            if not self._connected:
                continue
            for channel, members in list(self._members.items()):
                items = list(members.items())
                for start in range(0, len(items), 300):
                    args: list = [self._presence_ttl_ms(), self._chan(channel)]
                    for conn_id, (info_json, join) in items[start:start + 300]:
                        args += [conn_id, info_json, join]
                    self._write(_SCRIPTS["join"], self._pkeys(channel), args)
                self._write(_SCRIPTS["sweep"], self._pkeys(channel), [self._chan(channel), "sweep"])

    # -- forwarding between nodes ------------------------------------------------------------

    def forward(self, node: str, command: dict, timeout: float) -> Awaitable[dict]:
        return self._forward(node, command, timeout)

    async def _forward(self, node: str, command: dict, timeout: float) -> dict:
        if not self._connected:
            raise BrokerUnavailable("not connected to Redis")
        request_id = next(self._request_ids)
        future = asyncio.get_running_loop().create_future()
        self._replies[request_id] = future
        try:
            message = dumps({"t": "q", "id": request_id, "from": self.node_id, "cmd": command})
            try:
                receivers = await self.redis.publish(self._node_chan(node), message)
            except NETWORK_ERRORS as exc:
                raise _unavailable(exc) from None
            if not receivers:
                raise LookupError(node)
            return await asyncio.wait_for(future, timeout)
        finally:
            self._replies.pop(request_id, None)

    def _on_control(self, data: bytes) -> None:
        if data[:1] == b"S":
            self._on_relay(data)
            return
        try:
            message = decode_json(data)
        except ValueError:
            return
        if message.get("t") == "r":
            future = self._replies.get(message.get("id"))
            if future is not None and not future.done():
                future.set_result(message.get("a") or {})
        elif message.get("t") == "q":
            _spawn(self._answer(message))

    async def _answer(self, message: dict) -> None:
        answer = await self.on_command(message.get("cmd"))
        reply = dumps({"t": "r", "id": message.get("id"), "a": answer})
        try:
            await self.redis.publish(self._node_chan(str(message.get("from"))), reply)
        except NETWORK_ERRORS as exc:
            log.warning("could not answer a forwarded command: %s", exc)

    # -- SockJS sessions shared by the nodes ---------------------------------------------------

    @property
    def shares_sessions(self) -> bool:  # type: ignore[override]
        return self.options["sessions"].lower() in TRUE

    def _skey(self, key: str) -> str:
        return f"{self.prefix}:s:{key}"

    async def _session_ready(self) -> None:
        """Raise BrokerUnavailable unless connected; a node that has not connected yet
        (just started: with ``--workers`` the port takes requests before every worker's
        broker is up) waits for its first connection, at most connect_timeout."""
        if self._connected:
            return
        if not self._connected_once.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._connected_once.wait(), float(self.options["connect_timeout"]))
        if not self._connected:
            raise BrokerUnavailable("not connected to Redis")

    def session_claim(self, key: str) -> Awaitable[str]:
        return self._session_claim(key)

    async def _session_claim(self, key: str) -> str:
        self._owned.add(key)  # kept (and re-created by _session_loop) if Redis is away now
        await self._session_ready()
        try:
            old = await self.redis.set(self._skey(key), self.node_id, nx=True,
                                       px=int(self.session_ttl * 1000), get=True)
        except NETWORK_ERRORS as exc:
            raise _unavailable(exc) from None
        if old is None:
            return self.node_id
        owner = _text(old)
        if owner != self.node_id:
            self._owned.discard(key)
        return owner

    def session_owner(self, key: str) -> Awaitable[str | None]:
        return self._session_owner(key)

    async def _session_owner(self, key: str) -> str | None:
        await self._session_ready()
        try:
            owner = await self.redis.get(self._skey(key))
        except NETWORK_ERRORS as exc:
            raise _unavailable(exc) from None
        return None if owner is None else _text(owner)

    def session_release(self, key: str) -> Awaitable[None] | None:
        if key not in self._owned:
            return None
        self._owned.discard(key)
        # Through the ordered write queue: after any refresh of the key queued before.
        return self._write(_SCRIPTS["release"], [self._skey(key)], [self.node_id])

    async def _session_loop(self) -> None:
        """Every session_ttl / 3: refresh the records of this node's sessions."""
        while True:
            await asyncio.sleep(self.session_ttl / 3)
            if not self._connected:
                continue
            ttl = int(self.session_ttl * 1000)
            for key in list(self._owned):
                self._write(_SCRIPTS["session"], [self._skey(key)], [self.node_id, ttl],
                            lambda held, key=key: self._refreshed(key, held))

    def _refreshed(self, key: str, held: Any) -> None:
        if not held and key in self._owned:
            # Its record expired (an outage longer than session_ttl) and another node
            # claimed the id meanwhile: requests for it now go there.
            self._owned.discard(key)
            log.warning("SockJS session %s: another node holds its record now", key)

    def relay(self, node: str, payload: bytes, timeout: float) -> Awaitable[bytes]:
        return self._relay(node, payload, timeout)

    async def _relay(self, node: str, payload: bytes, timeout: float) -> bytes:
        await self._session_ready()
        request_id = next(self._request_ids)
        future = asyncio.get_running_loop().create_future()
        self._replies[request_id] = future
        try:
            message = b"S?%d %s\n" % (request_id, self.node_id.encode()) + payload
            receivers = await self._publish(self._node_chan(node), message)
            if not receivers:
                raise LookupError(node)
            return await asyncio.wait_for(future, timeout)
        finally:
            self._replies.pop(request_id, None)

    def _on_relay(self, data: bytes) -> None:
        """``S?<id> <from node>\n<payload>`` (a request) or ``S!<id>\n<payload>`` (an answer)."""
        head, _, payload = data.partition(b"\n")
        try:
            if head[1:2] == b"!":
                future = self._replies.get(int(head[2:]))
                if future is not None and not future.done():
                    future.set_result(payload)
            elif head[1:2] == b"?":
                request_id, _, sender = head[2:].partition(b" ")
                _spawn(self._answer_relay(int(request_id), sender.decode(), payload))
        except ValueError:
            log.warning("bad relay message %r", head[:100])

    async def _answer_relay(self, request_id: int, sender: str, payload: bytes) -> None:
        try:
            answer = await self.on_relay(payload)
        except Exception:
            log.exception("a relayed request failed")
            answer = b""
        try:
            await self._publish(self._node_chan(sender), b"S!%d\n" % request_id + answer)
        except BrokerUnavailable as exc:
            log.warning("could not answer a relayed request: %s", exc)

    def _publish(self, channel: str, message: bytes) -> asyncio.Future:
        """PUBLISH through one pipeline at a time (the relay's requests and answers, in
        the order they were made); the future gets the number of receivers."""
        future = asyncio.get_running_loop().create_future()
        future.add_done_callback(_consume)
        self._publishes.append((channel, message, future))
        self._publish_wakeup.set()
        return future

    async def _publish_loop(self) -> None:
        while True:
            await self._publish_wakeup.wait()
            self._publish_wakeup.clear()
            while self._publishes:
                batch = [self._publishes.popleft() for _ in range(min(BATCH, len(self._publishes)))]
                pipe = self.redis.pipeline(transaction=False)
                for channel, message, _future in batch:
                    pipe.publish(channel, message)
                try:
                    results = await pipe.execute(raise_on_error=False)
                except Exception as exc:
                    error = _unavailable(exc)
                    for _channel, _message, future in batch:
                        if not future.done():
                            future.set_exception(error)
                    continue
                for (_channel, _message, future), result in zip(batch, results, strict=True):
                    if future.done():
                        continue
                    if isinstance(result, Exception):
                        future.set_exception(_unavailable(result))
                    else:
                        future.set_result(result)

    # -- commands from applications -----------------------------------------------------------

    async def _command_list_loop(self) -> None:
        """BRPOP the command list: each command is taken by exactly one node."""
        backoff = BACKOFF_MIN
        while True:
            try:
                item = await self._blocking.brpop([self._cmd_key], timeout=1)
                backoff = BACKOFF_MIN
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("command list: %s", exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            if item is not None:
                await self._run_command_text(item[1])

    async def _lease_loop(self) -> None:
        """One node at a time reads the pub/sub command channel (so that a command
        published there runs once): it holds a lease key, renewed every second."""
        while True:
            await asyncio.sleep(1.0 if self._cmd_reader else 0.5)
            try:
                holder = await self._eval(_SCRIPTS["lease"], [self._lease_key], [self.node_id, LEASE_MS],
                                          retry=True)
            except Exception:
                holder = 0
            reader = bool(holder)
            if reader != self._cmd_reader:
                self._cmd_reader = reader
                if self._ps is not None:
                    self._sub_ops.append(("subscribe" if reader else "unsubscribe", self._cmd_key))
                    self._sub_wakeup.set()

    async def _command_runner(self) -> None:
        while True:
            await self._run_command_text(await self._cmd_queue.get())

    async def _run_command_text(self, raw: bytes) -> None:
        """One JSON command or an array of them, run in order. A command with
        ``"reply_to": "<list key>"`` gets its answer LPUSHed there (kept 60 s)."""
        try:
            value = decode_json(raw)
        except ValueError:
            log.warning("Redis command input: not JSON: %r", raw[:100])
            return
        for cmd in value if isinstance(value, list) else [value]:
            reply_to = cmd.pop("reply_to", None) if isinstance(cmd, dict) else None
            if isinstance(cmd, dict):
                cmd.pop("forwarded", None)
            answer = await self.on_command(cmd)
            if "error" in answer:
                log.warning("Redis command refused: %s", answer["error"].get("message"))
            if isinstance(reply_to, str) and reply_to:
                try:
                    pipe = self.redis.pipeline(transaction=False)
                    pipe.lpush(reply_to, dumps(answer))
                    pipe.expire(reply_to, 60)
                    await pipe.execute()
                except NETWORK_ERRORS as exc:
                    log.warning("could not send a command's answer: %s", exc)

    # -- application events -------------------------------------------------------------------

    def app_bridges(self, hub: Any) -> list:
        key = events_key(self.options)
        if key is None:
            return []
        maxlen = int(self.options["events_maxlen"])
        return [RedisEventStream(self, hub.events.add_queue("redis"), key, maxlen)]


class RedisEventStream:
    """Application events into a Redis Stream (one entry per event, field ``e``: its JSON),
    read by workers in a consumer group (sockway.app_redis.RedisWorker).

    At least once: a batch is XADDed in one pipeline; when Redis cannot be reached the
    batch goes back to the front of the output's queue and is sent again after a backoff
    (0.1 s doubling to 5 s), so part of it may be added twice — workers drop duplicates
    by event id. While Redis is away, events wait in the output's bounded queue
    (``event_queue_size``). The stream is capped at about ``maxlen`` entries (XADD
    MAXLEN ~): entries no worker read before being pushed out are lost."""

    def __init__(self, broker: RedisBroker, queue: EventQueue, key: str, maxlen: int) -> None:
        self.broker = broker
        self.queue = queue
        self.key = key
        self.maxlen = maxlen
        self.task: asyncio.Task | None = None
        self.failures = 0

    async def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())
        log.info("application events go to the Redis stream %s", self.key)

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    async def _run(self) -> None:
        backoff = BACKOFF_MIN
        while True:
            await self.queue.wait()
            batch = self.queue.take(BATCH)
            pipe = self.broker.redis.pipeline(transaction=False)
            for _event, data in batch:
                pipe.xadd(self.key, {"e": data}, maxlen=self.maxlen, approximate=True)
            try:
                await pipe.execute()
            except (RedisError, OSError) as exc:
                self.failures += 1
                self.queue.requeue_front(batch)
                log.warning("events to Redis failed (%s); retrying in %.1fs", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            backoff = BACKOFF_MIN
            self.queue.sent += len(batch)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _consume(future: asyncio.Future) -> None:
    """Mark a future's exception as retrieved (nobody may be waiting for it)."""
    if not future.cancelled():
        future.exception()


_tasks: set[asyncio.Task] = set()


def _spawn(coro: Any) -> None:
    task = asyncio.get_running_loop().create_task(coro)
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)
