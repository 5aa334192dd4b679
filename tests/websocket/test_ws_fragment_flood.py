"""Fragments cannot be used to amplify memory or stall the gateway (RFC 6455 section
5.4 allows any number of them; sockway bounds them): ten clients that each send an
unfinished message of just under ``max_message_size`` as 2-byte continuation frames are
closed with 1009 once their message has more than 64 frames of less than 64 bytes,
the gateway's memory does not grow by more than a few MiB, and its health check keeps
answering at once meanwhile. Its own gateway: the test measures its memory."""

from __future__ import annotations

import threading
import time
import urllib.request

from wsraw import CLOSE, RawWS, rss_kib

from support import config_gateway

MAX_MESSAGE = 1 << 20
CLIENTS = 10
CONFIG = f"""
[[endpoint]]
prefix = "/echo"
mode = "echo"
max_message_size = {MAX_MESSAGE}
"""
KEY = b"\x11\x22\x33\x44"


def masked(first: int, payload: bytes) -> bytes:
    return bytes((first, 0x80 | len(payload))) + KEY + bytes(b ^ KEY[i % 4] for i, b in enumerate(payload))


FIRST = masked(0x01, b"ab")
CONTINUATIONS = masked(0x00, b"ab") * 8192  # 8,192 frames, 64 KiB on the wire


def trickle(raw: RawWS, result: dict, stop: threading.Event) -> None:
    """Send a text message of MAX_MESSAGE - 2 bytes as 2-byte frames, never the final
    one, 64 KiB at a time; stop at the server's close frame (read by the caller)."""
    sent = 0
    try:
        raw.sock.sendall(FIRST)
        sent = 2
        while sent < MAX_MESSAGE - 2 - 16384 and not stop.is_set():
            raw.sock.sendall(CONTINUATIONS)
            sent += 16384
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server closed the connection: what matters is the close frame it sent first
    result["sent"] = sent


def health_latency(url: str) -> float:
    start = time.monotonic()
    with urllib.request.urlopen(url + "/sockway/health", timeout=10) as r:
        assert r.status == 200
    return time.monotonic() - start


def test_fragment_trickle_is_closed_and_costs_little():
    with config_gateway(CONFIG) as gw:
        clients = [RawWS(gw.port, "/echo/websocket", timeout=10) for _ in range(CLIENTS)]
        assert all(c.status == 101 for c in clients)
        health_latency(gw.url)
        base = rss_kib(gw.proc.pid)
        stop = threading.Event()
        results: list[dict] = [{} for _ in clients]
        senders = [threading.Thread(target=trickle, args=(c, r, stop), daemon=True)
                   for c, r in zip(clients, results, strict=True)]
        closes: list = [None] * CLIENTS

        def read_close(i: int) -> None:
            closes[i] = clients[i].recv_frame(timeout=20)

        readers = [threading.Thread(target=read_close, args=(i,), daemon=True) for i in range(CLIENTS)]
        for thread in senders + readers:
            thread.start()
        worst, peak, start = 0.0, base, time.monotonic()
        deadline = time.monotonic() + 30
        try:
            while any(t.is_alive() for t in readers) and time.monotonic() < deadline:
                worst = max(worst, health_latency(gw.url))
                peak = max(peak, rss_kib(gw.proc.pid))
                time.sleep(0.02)
        finally:
            stop.set()
            for thread in senders + readers:
                thread.join(5)
            for c in clients:
                c.close()
        worst = max(worst, health_latency(gw.url))
        peak = max(peak, rss_kib(gw.proc.pid))
        print(f"closed in {time.monotonic() - start:.2f}s; RSS +{(peak - base) / 1024:.1f} MiB;"
              f" slowest health check {worst:.3f}s")
        reasons = {(f.opcode, f.close_code, f.close_reason) if f else None for f in closes}
        assert reasons == {(CLOSE, 1009, "message in too many small fragments")}, reasons
        # Each client got at most a few hundred KiB through before the close reached it.
        assert all(r["sent"] < MAX_MESSAGE - 2 for r in results), results
        assert (peak - base) < 8 * 1024, f"RSS grew by {(peak - base) / 1024:.1f} MiB"
        assert worst < 0.5, f"/sockway/health took {worst:.2f}s"
        log = gw.output()
        assert "Traceback" not in log and " ERROR " not in log, log
