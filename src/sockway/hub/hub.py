"""The hub: every endpoint of one process, its connections by id, channels, the
application bridge's events and commands, the write coalescer and the periodic sweep
that drives timeouts, heartbeats and keepalives."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from sockway import closecodes
from sockway.auth import TokenVerifier
from sockway.bridge.commands import Commands
from sockway.bridge.events import EventBus
from sockway.brokers.base import Broker
from sockway.hub.channels import ChannelHub
from sockway.hub.coalesce import Coalescer
from sockway.hub.connection import NODE_ID

if TYPE_CHECKING:
    from sockway.config import ServerConfig
    from sockway.hub.connection import Connection
    from sockway.hub.endpoint import Endpoint

__all__ = ["Decisions", "Hub", "Stats"]

log = logging.getLogger("sockway.hub")


@dataclass
class Stats:
    slow_consumers: int = 0
    rejected_connections: int = 0
    rate_limited: int = 0
    auth_failures: int = 0


class Decisions:
    """Questions put to the application (an ``app`` permission, an ``open`` to accept),
    answered by the ``reply``/``accept`` commands or timed out."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.pending: dict[str, tuple[Callable[[bool, str], None], asyncio.TimerHandle]] = {}

    def ask(self, event_id: str, timeout: float, answer: Callable[[bool, str], None]) -> None:
        handle = self.loop.call_later(timeout, self._timeout, event_id)
        self.pending[event_id] = (answer, handle)

    def _timeout(self, event_id: str) -> None:
        entry = self.pending.pop(event_id, None)
        if entry is not None:
            entry[0](False, "the application did not answer in time")

    def resolve(self, event_id: str, allow: bool, reason: str = "") -> bool:
        entry = self.pending.pop(event_id, None)
        if entry is None:
            return False
        entry[1].cancel()
        entry[0](allow, reason)
        return True


class Hub:
    def __init__(self, loop: asyncio.AbstractEventLoop, config: ServerConfig, broker: Broker,
                 node_id: str | None = None) -> None:
        self.loop = loop
        self.config = config
        self.node_id = node_id or NODE_ID
        self.max_connections = config.max_connections
        self.coalescer = Coalescer(loop)
        self.endpoints: dict[str, Endpoint] = {}
        self.by_id: dict[str, Connection] = {}
        self.connections = 0
        self.stats = Stats()
        self.shutting_down = False
        self.broker = broker
        self.channels = ChannelHub(broker, config)
        self.events = EventBus(self.node_id, config.event_queue_size)
        self.auth = TokenVerifier(config.auth)
        self.decisions = Decisions(loop)
        self.commands = Commands(self)
        self._sweepers: list[Callable[[float], None]] = []
        self._sweep_task: asyncio.Task | None = None

    @property
    def accepting(self) -> bool:
        return not self.shutting_down and self.connections < self.max_connections

    def add_endpoint(self, endpoint: Endpoint) -> None:
        self.endpoints[endpoint.prefix] = endpoint

    def add_sweeper(self, sweep: Callable[[float], None]) -> None:
        """Register a function called with the loop time every sweep interval."""
        self._sweepers.append(sweep)

    async def start(self, sweep_interval: float) -> None:
        await self.broker.start()
        for endpoint in self.endpoints.values():
            await endpoint.mode.start()
        self._sweep_task = self.loop.create_task(self._sweep(sweep_interval))

    async def _sweep(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            now = self.loop.time()
            for sweep in self._sweepers:
                try:
                    sweep(now)
                except Exception:
                    log.exception("sweep failed")

    async def shutdown(self, timeout: float) -> None:
        """Close every connection with 1001 (SockJS ``c[1001,...]``) and wait, at most
        ``timeout`` seconds, for them to go."""
        self.shutting_down = True
        for endpoint in self.endpoints.values():
            await endpoint.mode.stop()
            for conn in list(endpoint.clients):
                conn.close(closecodes.GOING_AWAY, closecodes.SHUTDOWN_REASON)
        self.coalescer.flush_now()
        deadline = self.loop.time() + timeout
        while self.connections and self.loop.time() < deadline:
            await asyncio.sleep(0.05)
        if self._sweep_task is not None:
            self._sweep_task.cancel()
        if self.connections:
            log.warning("%d connection(s) still open after %.1fs", self.connections, timeout)

    async def close_broker(self) -> None:
        await self.broker.stop()

    def stats_dict(self) -> dict:
        return {
            "node": self.node_id,
            "connections": self.connections,
            "endpoints": {p: {"mode": e.mode.name, "connections": len(e.clients),
                              "messages_in": e.messages_in}
                          for p, e in self.endpoints.items()},
            "channels": self.channels.stats(),
            "events": self.events.stats(),
            "commands": {"executed": self.commands.executed, "failed": self.commands.failed},
            "broker": self.broker.describe(),
            "coalescer": {"flushes": self.coalescer.flushes, "writes": self.coalescer.writes},
            **asdict(self.stats),
        }
