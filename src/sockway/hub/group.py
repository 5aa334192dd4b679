"""A set of connections that receive the same messages: an endpoint's clients, a
channel's subscribers.

Members are kept by encoding key so that :meth:`Group.publish` encodes a message once
per key present (a raw WebSocket frame, a compressed frame, the SockJS string) and then
only appends bytes to each member's queue: no await, no per-recipient encoding.
"""

from __future__ import annotations

from collections.abc import Iterator

from sockway.hub.connection import Connection
from sockway.hub.message import OutMessage

__all__ = ["Group"]


class Group:
    __slots__ = ("_by_key", "_size")

    def __init__(self) -> None:
        self._by_key: dict[int, dict[str, Connection]] = {}
        self._size = 0

    def add(self, conn: Connection) -> None:
        members = self._by_key.get(conn.encoding_key)
        if members is None:
            members = self._by_key[conn.encoding_key] = {}
        if conn.id not in members:
            members[conn.id] = conn
            self._size += 1

    def discard(self, conn: Connection) -> None:
        members = self._by_key.get(conn.encoding_key)
        if members is not None and members.pop(conn.id, None) is not None:
            self._size -= 1
            if not members:
                del self._by_key[conn.encoding_key]

    def __contains__(self, conn: Connection) -> bool:
        members = self._by_key.get(conn.encoding_key)
        return members is not None and conn.id in members

    def __len__(self) -> int:
        return self._size

    def __iter__(self) -> Iterator[Connection]:
        for members in list(self._by_key.values()):
            yield from list(members.values())

    def publish(self, message: OutMessage, exclude: Connection | None = None) -> int:
        """Queue ``message`` for every member; returns the number of recipients.

        Members are never removed synchronously while this runs: connections that
        close (slow consumers included) leave their groups from a later callback.
        """
        count = 0
        for key, members in self._by_key.items():
            encoded = message.encode(key)
            if exclude is not None and exclude.encoding_key == key:
                for conn in members.values():
                    if conn is not exclude:
                        conn.push(encoded)
                count += len(members) - (exclude.id in members)
            else:
                for conn in members.values():
                    conn.push(encoded)
                count += len(members)
        return count
