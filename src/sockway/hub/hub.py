"""The hub: every endpoint of one process, the write coalescer and the periodic sweep
that drives timeouts, heartbeats and keepalives."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from sockway import closecodes
from sockway.hub.coalesce import Coalescer
from sockway.hub.endpoint import Endpoint

__all__ = ["Hub", "Stats"]

log = logging.getLogger("sockway.hub")


@dataclass
class Stats:
    slow_consumers: int = 0
    rejected_connections: int = 0


class Hub:
    def __init__(self, loop: asyncio.AbstractEventLoop, max_connections: int = 100_000) -> None:
        self.loop = loop
        self.coalescer = Coalescer(loop)
        self.endpoints: dict[str, Endpoint] = {}
        self.max_connections = max_connections
        self.connections = 0
        self.stats = Stats()
        self.shutting_down = False
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
