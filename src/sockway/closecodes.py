"""Close codes sockway sends, in one place (WebSocket close frames, SockJS ``c[...]``
frames and the ``code`` of application close events use the same numbers).

RFC 6455 section 7.4.1 defines 1000-1015; SockJS uses 2010 and 3000 (sockjs-protocol);
4000-4999 are private codes, which sockway uses for its own policies.
"""

NORMAL = 1000
GOING_AWAY = 1001  # server shutting down
PROTOCOL_ERROR = 1002  # also SockJS "Connection interrupted"
ABNORMAL = 1006  # no close frame (never sent on the wire)
INVALID_DATA = 1007  # invalid UTF-8 in a text message
POLICY_VIOLATION = 1008
MESSAGE_TOO_BIG = 1009
INTERNAL_ERROR = 1011
TRY_AGAIN_LATER = 1013  # connection limit reached
ANOTHER_CONNECTION = 2010  # SockJS: a second receiving request on one session
GO_AWAY = 3000  # SockJS: the application closed the session
SLOW_CONSUMER = 4008  # the client did not read fast enough; its buffer was full
SESSION_QUEUE_FULL = 4009  # a SockJS session's queue overflowed while no request was attached
UNAUTHORIZED = 4001  # no valid token (missing, invalid, expired) or the application refused
FORBIDDEN = 4003  # the application refused the connection
AUTH_TIMEOUT = 4002  # no authentication within auth_timeout
RATE_LIMITED = 4029  # more incoming messages than rate_limit allows

SHUTDOWN_REASON = "Server shutting down"


def websocket_code(code: int) -> int:
    """The code to put in a WebSocket close frame for a SockJS close code: codes a
    WebSocket endpoint may send (RFC 6455 section 7.4) pass, others become 1000."""
    if code in (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013):
        return code
    if 3000 <= code <= 4999:
        return code
    return NORMAL
