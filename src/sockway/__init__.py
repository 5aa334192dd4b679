"""sockway: a real-time gateway.

Browsers connect over WebSocket (RFC 6455) or SockJS; applications in any language
reach them through a message queue or plain HTTP. See README.md and docs/.
"""

__version__ = "0.1.0"
