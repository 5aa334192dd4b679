"""The ``app`` mode: every client open, message and close becomes an application event
(docs/bridge.md, "Events"), and the application drives the connection with commands
(docs/bridge.md, "Commands"): send, publish, subscribe, unsubscribe, close.

With ``app_accept = true`` a new connection is held until the application answers its
``open`` event with ``{"op": "accept", "conn": ...}`` (or closes it, or says nothing
within ``auth_timeout``: closed with 4001). Client messages that arrive meanwhile are
queued and delivered, in order, right after the acceptance.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sockway import closecodes
from sockway.hub.modes import Mode, register_mode

if TYPE_CHECKING:
    from sockway.hub.connection import Connection

__all__ = ["AppMode"]

MAX_HELD = 100


@register_mode
class AppMode(Mode):
    name = "app"
    needs_info = True

    def __init__(self) -> None:
        self.held: dict[str, list[str | bytes]] = {}

    @property
    def authenticates_later(self) -> bool:  # type: ignore[override]
        return self.endpoint.config.app_accept

    def on_open(self, conn: Connection) -> None:
        info = conn.info.as_dict() if conn.info is not None else {"remote": conn.remote}
        event = self.hub.events.emit(
            conn, "open", user=conn.user, remote=info.pop("remote", conn.remote),
            transport=conn.transport_name, request=info,
            claims=conn.claims, pending=self.endpoint.config.app_accept,
        )
        if self.endpoint.config.app_accept:
            if event is None:
                conn.close(closecodes.UNAUTHORIZED, "no application to accept the connection")
                return
            self.held[conn.id] = []
            self.hub.loop.call_later(self.endpoint.config.auth_timeout, self._deadline, conn)

    def _deadline(self, conn: Connection) -> None:
        if conn.id in self.held and conn.is_open:
            self.held.pop(conn.id, None)
            conn.close(closecodes.UNAUTHORIZED, "the application did not accept the connection")

    def accept(self, conn: Connection, user: str | None, info) -> None:
        held = self.held.pop(conn.id, None)
        if user is not None:
            conn.user = user
        if conn.claims is None:
            conn.claims = {"sub": user} if user is not None else {}
        if isinstance(info, dict):
            conn.claims["info"] = info
        for data in held or ():
            self._emit_message(conn, data)

    def on_message(self, conn: Connection, data: str | bytes) -> None:
        held = self.held.get(conn.id)
        if held is not None:
            if len(held) >= MAX_HELD:
                conn.close(closecodes.POLICY_VIOLATION, "too many messages before being accepted")
                return
            held.append(data)
            return
        self._emit_message(conn, data)

    def _emit_message(self, conn: Connection, data: str | bytes) -> None:
        if isinstance(data, bytes):
            import base64

            self.hub.events.emit(conn, "message", data=base64.b64encode(data).decode(),
                                 binary=True, user=conn.user)
        else:
            self.hub.events.emit(conn, "message", data=data, user=conn.user)

    def on_close(self, conn: Connection, code: int, reason: str) -> None:
        self.held.pop(conn.id, None)
        self.hub.events.emit(conn, "close", code=code, reason=reason, user=conn.user)
