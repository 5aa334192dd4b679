"""The application side: client events out, commands in (docs/bridge.md).

Events (gateway -> application) are JSON objects built once and handed to every
configured output (ZeroMQ PUSH, webhooks, ...). Commands (application -> gateway) are
JSON objects executed by :class:`~.commands.Commands`, whatever way they came in (HTTP
API, ZeroMQ SUB/PULL, a webhook's response).
"""
