"""A gateway that does nothing, to measure the publisher's ceiling (bridge calibration).

    python -m benchmarks.sink '<JSON config: {"port": ..., "zmq_address": ...}>'

It answers every HTTP request at once with a canned ``200`` (``/api/publish`` and
``/api/commands`` alike, keep-alive), and drains a bound ZeroMQ PULL socket in a thread.
What the publisher reaches against it, with no window, is what it can send on this
machine; the table prints it next to what the gateway took.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import threading

__all__ = ["main"]

ANSWER = b'{"result":{"channel":"bench","offset":1,"epoch":"00000000"}}'
RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
            % len(ANSWER)) + ANSWER


class Answer(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.buf = bytearray()

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        out = []
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                break
            head = bytes(buf[:end]).lower()
            i = head.find(b"\r\ncontent-length:")
            length = int(head[i + 17:head.find(b"\r\n", i + 2) if head.find(b"\r\n", i + 2) > 0 else len(head)]) \
                if i >= 0 else 0
            if len(buf) < end + 4 + length:
                break
            del buf[:end + 4 + length]
            out.append(RESPONSE)
        if out:
            self.transport.write(b"".join(out))  # type: ignore[attr-defined]


def _drain(address: str, counter: list[int]) -> None:
    import zmq

    sock = zmq.Context.instance().socket(zmq.PULL)
    sock.setsockopt(zmq.RCVHWM, 1_000_000)
    sock.bind(address)
    while True:
        sock.recv(copy=False)
        counter[0] += 1


async def _serve(cfg: dict) -> None:
    counter = [0]
    if cfg.get("zmq_address"):
        threading.Thread(target=_drain, args=(cfg["zmq_address"], counter), daemon=True).start()
    server = await asyncio.get_running_loop().create_server(Answer, "127.0.0.1", cfg["port"])
    print(json.dumps({"ready": True}), flush=True)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    cfg = json.loads((argv if argv is not None else sys.argv[1:])[0])
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(cfg))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
