"""The TCP tunnel splits lines in linear time: a flood of newlines does not stall the
gateway (it took 9-14 s for 2 MiB when every line split copied the rest of the buffer),
and a line over ``max_line`` is refused whether or not its newline came with it."""

from __future__ import annotations

import socket
import threading
import time
import urllib.request

from support import config_gateway, free_port

T = 10.0


def health_latency(url: str) -> float:
    start = time.monotonic()
    with urllib.request.urlopen(url + "/sockway/health", timeout=T) as r:
        assert r.status == 200
    return time.monotonic() - start


class Lines:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=T)
        self.buffer = b""

    def line(self) -> str:
        deadline = time.monotonic() + T
        while b"\n" not in self.buffer:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            data = self.sock.recv(65536)
            assert data, f"closed by the gateway (have {self.buffer!r})"
            self.buffer += data
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.decode()


def tunnel_gateway():
    port = free_port()
    return config_gateway(f'[[tunnel]]\nlisten = "127.0.0.1:{port}"\nchannel = "t"\n'), port


def test_newline_flood_does_not_stall_the_gateway():
    gateway, port = tunnel_gateway()
    with gateway as gw:
        client = Lines(port)
        try:
            assert client.line().startswith("* connected")
            flood = b"\n" * (2 << 20) + b"\r\n" * (1 << 19)  # 3 MiB of empty lines
            sender = threading.Thread(target=client.sock.sendall, args=(flood + b"after the flood\n",))
            sender.start()
            worst = 0.0
            while sender.is_alive():
                worst = max(worst, health_latency(gw.url))
            sender.join()
            worst = max(worst, health_latency(gw.url))
            # The marker line comes back once the flood is read: it was all read, in order.
            assert client.line() == f"[tcp 127.0.0.1:{client.sock.getsockname()[1]}] after the flood"
            worst = max(worst, health_latency(gw.url))
            print(f"slowest health check during the flood: {worst:.3f}s")
            assert worst < 0.5, f"/sockway/health took {worst:.2f}s"
        finally:
            client.sock.close()
        log = gw.output()
        assert "Traceback" not in log and " ERROR " not in log, log


def test_line_too_long_with_its_newline_is_refused():
    gateway, port = tunnel_gateway()
    with gateway as gw:
        client = Lines(port)
        try:
            assert client.line().startswith("* connected")
            client.sock.sendall(b"short\n" + b"x" * 5000 + b"\nnot read\n")
            assert client.line().endswith("] short")
            assert client.line() == "* closed: line longer than 4096 bytes"
            client.sock.settimeout(T)
            assert client.sock.recv(100) == b""
        finally:
            client.sock.close()
        assert "Traceback" not in gw.output()
