"""The standard SockJS protocol test server (docs/cli.md, "sockway testserver").

Endpoints, as the sockjs-protocol suite and sockjs-client's own tests expect them:

* ``/echo`` -- echo, streaming responses closed after 4096 bytes;
* ``/disabled_websocket_echo`` -- echo with WebSocket disabled;
* ``/cookie_needed_echo`` -- echo with the JSESSIONID cookie on;
* ``/close`` -- every session is closed at once with ``c[3000,"Go away!"]``;
* ``/ticker`` -- sends ``tick!`` every second;
* ``/amplify`` -- answers a number n with a message of 2**n ``x`` (n clamped to 1..19);
* ``/broadcast`` -- every message to every client.
"""

from __future__ import annotations

import asyncio
import contextlib

from sockway import closecodes
from sockway.config import EndpointConfig, ServerConfig
from sockway.hub.message import OutMessage
from sockway.hub.modes import Mode, register_mode

__all__ = ["testserver_config"]


@register_mode
class CloseMode(Mode):
    """Closes every session as soon as it opens."""

    name = "close"

    def on_open(self, conn) -> None:
        conn.close(closecodes.GO_AWAY, "Go away!")


@register_mode
class TickerMode(Mode):
    name = "ticker"

    def __init__(self) -> None:
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._tick())

    async def _tick(self) -> None:
        message = OutMessage("tick!")
        while True:
            await asyncio.sleep(1)
            self.endpoint.clients.publish(message)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


@register_mode
class AmplifyMode(Mode):
    name = "amplify"

    def on_message(self, conn, data) -> None:
        try:
            n = int(data)
        except (TypeError, ValueError):
            n = 1
        n = min(max(n, 1), 19)
        conn.send(OutMessage("x" * 2**n))


def testserver_config(host: str = "127.0.0.1", port: int = 8081, **server) -> ServerConfig:
    common = {"response_limit": 4096}
    endpoints = [
        EndpointConfig("/echo", "echo", **common),
        EndpointConfig("/disabled_websocket_echo", "echo", websocket=False, **common),
        EndpointConfig("/cookie_needed_echo", "echo", cookie_needed=True, **common),
        EndpointConfig("/close", "close", **common),
        EndpointConfig("/ticker", "ticker", **common),
        EndpointConfig("/amplify", "amplify", **common),
        EndpointConfig("/broadcast", "broadcast", **common),
    ]
    server.setdefault("allowed_origins", ["*"])
    return ServerConfig(host=host, port=port, endpoints=endpoints, **server)
