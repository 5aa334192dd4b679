"""A ``logging.Handler`` that ships log records to browsers: the talk's realtime
logging bundle.

    import logging
    from sockway.loghandler import SockwayHandler

    logging.getLogger().addHandler(SockwayHandler("tcp://127.0.0.1:5557", channel="logs"))
    logging.getLogger("shop").warning("payment %s declined", order_id)

Each record is published to ``channel`` as
``{"time", "level", "logger", "message", "module", "line", "process", "exception"?}``
through the gateway's ZeroMQ PULL socket (a PUSH connection keeps what it sends until
it is connected, so the first records are not lost), or through the HTTP API with
``url=`` and ``key=``. Shipping never raises into the application: a failure is
reported once through ``logging.Handler.handleError`` (the first of an outage: nothing
more until a record gets through again, then the next failure is reported).
"""

from __future__ import annotations

import json
import logging
import urllib.request

__all__ = ["SockwayHandler", "record_data"]


def record_data(record: logging.LogRecord, formatter: logging.Formatter | None = None) -> dict:
    data = {
        "time": record.created,
        "level": record.levelname,
        "logger": record.name,
        "message": record.getMessage(),
        "module": record.module,
        "line": record.lineno,
        "process": record.process,
    }
    if record.exc_info:
        data["exception"] = (formatter or logging.Formatter()).formatException(record.exc_info)
    return data


class SockwayHandler(logging.Handler):
    def __init__(self, zmq: str | None = None, channel: str = "logs", *, url: str | None = None,
                 key: str | None = None, level: int = logging.NOTSET, timeout: float = 2.0) -> None:
        super().__init__(level)
        if bool(zmq) == bool(url):
            raise ValueError("give either a ZeroMQ address (the gateway's [zeromq] pull) or url= and key=")
        self.channel = channel
        self.url = url.rstrip("/") if url else None
        self.key = key
        self.timeout = timeout
        self.socket = None
        self.context = None
        self.failing = False  # the last record could not be shipped (reported already)
        if zmq:
            import atexit

            import zmq as _zmq

            # A context of its own, terminated on close() or at exit: terminating waits
            # (up to LINGER) for queued records, so a short-lived process loses none.
            self.context = _zmq.Context()
            self.socket = self.context.socket(_zmq.PUSH)
            self.socket.setsockopt(_zmq.LINGER, 2000)
            self.socket.setsockopt(_zmq.SNDHWM, 10_000)
            self.socket.connect(zmq)
            atexit.register(self.close)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            command = {"op": "publish", "channel": self.channel, "data": record_data(record, self.formatter)}
            body = json.dumps(command, default=str).encode()
            if self.socket is not None:
                import zmq as _zmq

                self.socket.send(body, _zmq.NOBLOCK)
            else:
                request = urllib.request.Request(
                    f"{self.url}/api/publish", data=body, method="POST",
                    headers={"Authorization": f"Bearer {self.key}", "Content-Type": "application/json"})
                with urllib.request.urlopen(request, timeout=self.timeout):
                    pass
        except Exception:
            if not self.failing:
                self.failing = True
                self.handleError(record)
        else:
            self.failing = False

    def close(self) -> None:
        if self.socket is not None:
            self.socket.close()
            self.socket = None
        if self.context is not None:
            self.context.term()
            self.context = None
        super().close()
