"""Connections, groups and delivery: encode once, write to many, never wait on one.

The hub does not know about sockets or HTTP. A :class:`~.connection.Connection` is
whatever the edge attached (a raw WebSocket, a SockJS session on any transport); a
:class:`~.group.Group` fans a :class:`~.message.OutMessage` out to its members, each
member receiving the encoding its transport needs, computed once per message; the
:class:`~.coalesce.Coalescer` turns everything queued for a connection during one event
loop iteration into one write.
"""
