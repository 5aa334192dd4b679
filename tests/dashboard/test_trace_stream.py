"""The frame tracer through its WebSocket (/admin/api/trace), against a real gateway.

Records are decoded for each transport: raw WebSocket (text, binary, fragments, ping,
pong, close with its code, compressed frames inflated), SockJS over WebSocket and over
HTTP (xhr-streaming, xhr-polling: open, messages, close frames and what the client
posts), channel publications. Filters: endpoint, connection, user (JWT ``sub``),
channel, regular expression, and several at once. A bad regular expression and a
wrong key are refused before the upgrade. A watcher that never reads costs the gateway
a bounded queue, not its speed, and learns how many records it lost.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid

import aiohttp
import pytest
import websockets
from dashboard_support import (
    API_KEY,
    TUNNEL_PORT,
    RawClient,
    T,
    admin,
    api_command,
    http,
    records_of,
    token,
    trace,
    wait_for,
    watchers,
)

from sockway.client import connect
from support import hixie_connect

pytestmark = pytest.mark.timeout(90)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def test_raw_websocket_frames_are_decoded(gw):
    text = unique("hello")
    long_text = unique("long") + " " + "compressible " * 100
    cut = "a" * 255 + "é" + unique("cut")  # a character across the first 256 bytes
    binary = b"\x00\x01\xfe\xff"

    async def main():
        async with trace(gw.url, endpoint="/echo") as t:
            async with websockets.connect(gw.ws_url + "/echo/websocket", compression="deflate",
                                          open_timeout=T) as ws:
                for message in (text, long_text, cut, binary):
                    await ws.send(message)
                    assert await asyncio.wait_for(ws.recv(), T) == message
                await ws.send(iter(["frag", "ments"]))
                assert await asyncio.wait_for(ws.recv(), T) == "fragments"
                await asyncio.wait_for(await ws.ping(b"pp"), T)
                await ws.close(4000, "bye")
            return await t.until(lambda rs: records_of(rs, dir="out", kind="ws-close"))

    records = asyncio.run(main())
    conn = records_of(records, data=text)[0]["conn"]
    mine = records_of(records, conn=conn)
    assert all(r["endpoint"] == "/echo" and r["transport"] == "websocket" for r in mine)

    [text_in] = records_of(mine, dir="in", data=text)
    assert text_in["kind"] == "ws-text" and text_in["size"] == len(text) and text_in["fin"] is True
    [text_out] = records_of(mine, dir="out", data=text)
    assert text_out["kind"] == "ws-text" and not text_out.get("compressed")  # under compress_threshold

    # Compressed both ways (the client deflates every message; the gateway above 64
    # bytes): shown inflated, with the size of the message and of the frame on the wire.
    [long_in] = records_of(mine, dir="in", data=long_text)
    assert long_in["size"] == len(long_text)
    [long_out] = records_of(mine, dir="out", data=long_text)
    assert long_out["compressed"] is True and long_out["wire"] < len(long_text) / 4

    assert records_of(mine, dir="in", kind="ws-text", data=cut), "text cut at 256 bytes shown as binary"
    assert records_of(mine, dir="out", kind="ws-text", data=cut)
    assert records_of(mine, dir="in", kind="ws-binary", data="0x0001feff", size=4)
    assert records_of(mine, dir="out", kind="ws-binary", data="0x0001feff", size=4)

    assert records_of(mine, dir="in", kind="ws-text", data="frag", fin=False)
    assert records_of(mine, dir="in", kind="ws-cont", data="ments")
    assert records_of(mine, dir="in", kind="ws-cont", fin=True)  # websockets ends with an empty frame
    assert records_of(mine, dir="out", kind="ws-text", data="fragments")

    assert records_of(mine, dir="in", kind="ws-ping", data="pp")
    assert records_of(mine, dir="out", kind="ws-pong", data="pp")
    assert records_of(mine, dir="in", kind="ws-close", code=4000, data="bye")
    assert records_of(mine, dir="out", kind="ws-close", code=4000)
    assert [r["t"] for r in mine] == sorted(r["t"] for r in mine)


def test_sockjs_over_websocket_frames_are_decoded(gw):
    text = unique("sockjs-ws")

    async def main():
        async with trace(gw.url, endpoint="/echo") as t, connect(gw.url + "/echo", transport="websocket") as client:
            await client.send(text)
            assert await client.recv(T) == text
            conn = (await t.until(lambda rs: records_of(rs, dir="out", data=f'a["{text}"]')))[0]["conn"]
            await asyncio.to_thread(api_command, gw.url, "close", {"conn": conn, "code": 3001, "reason": "done"})
            return await t.until(lambda rs: records_of(rs, dir="out", sockjs="close"))

    records = asyncio.run(main())
    conn = records_of(records, dir="in", data=f'["{text}"]')[0]["conn"]
    mine = records_of(records, conn=conn)
    assert all(r["transport"] == "sockjs-websocket" for r in mine)
    assert records_of(mine, dir="out", kind="ws-text", sockjs="open", data="o")
    assert records_of(mine, dir="in", kind="ws-text", sockjs="send", messages=1, data=f'["{text}"]')
    assert records_of(mine, dir="out", kind="ws-text", sockjs="messages", messages=1, data=f'a["{text}"]')
    assert records_of(mine, dir="out", kind="ws-text", sockjs="close", code=3001, reason="done")
    assert records_of(mine, dir="out", kind="ws-close")


def test_hixie76_frames_are_decoded(gw):
    """The legacy hixie-76 SockJS transport is traced like the others."""
    text = unique("hixie")

    async def main():
        async with trace(gw.url, endpoint="/echo") as t:
            sock = await asyncio.to_thread(hixie_connect, gw.port, f"/echo/000/{uuid.uuid4().hex[:8]}/websocket")
            try:
                await asyncio.to_thread(sock.sendall, b"\x00" + json.dumps([text]).encode() + b"\xff")
                return await t.until(lambda rs: records_of(rs, dir="out", data=f'a["{text}"]'))
            finally:
                sock.close()

    records = asyncio.run(main())
    conn = records_of(records, dir="out", data=f'a["{text}"]')[0]["conn"]
    mine = records_of(records, conn=conn)
    assert all(r["transport"] == "sockjs-websocket-hixie76" and r["kind"] == "hixie-text" for r in mine), mine
    assert records_of(mine, dir="out", sockjs="open", data="o")
    assert records_of(mine, dir="in", sockjs="send", messages=1, data=f'["{text}"]')
    assert records_of(mine, dir="out", sockjs="messages", messages=1)


def test_tcp_tunnel_lines_are_traced_and_counted(gw):
    """A line typed into the TCP tunnel and the line it gets back are traced, and its
    bytes are counted in the endpoint's metrics."""
    text = unique("typed")
    endpoint = f"/tcp/{TUNNEL_PORT}"

    async def main():
        async with trace(gw.url, endpoint=endpoint) as t:
            reader, writer = await asyncio.open_connection("127.0.0.1", TUNNEL_PORT)
            try:
                await asyncio.wait_for(reader.readline(), T)  # the greeting
                writer.write(text.encode() + b"\n")
                echoed = await asyncio.wait_for(reader.readline(), T)
                assert text in echoed.decode(), echoed
                return await t.until(lambda rs: records_of(rs, dir="out", kind="tcp-line"))
            finally:
                writer.close()

    records = asyncio.run(main())
    assert all(r["endpoint"] == endpoint and r["transport"] == "tcp" for r in records), records
    assert records_of(records, dir="in", kind="tcp-line", data=text)
    [out] = records_of(records, dir="out", kind="tcp-line")
    assert text in out["data"]
    metrics = http(gw.url + "/metrics")[2].decode()
    for name in ("sockway_bytes_received_total", "sockway_bytes_sent_total"):
        line = next(x for x in metrics.splitlines() if x.startswith(f'{name}{{endpoint="{endpoint}"}}'))
        assert float(line.rsplit(" ", 1)[1]) > len(text), line


@pytest.mark.parametrize("transport", ["xhr-streaming", "xhr-polling"])
def test_sockjs_http_frames_are_decoded(gw, transport):
    text = unique(transport)

    async def main():
        async with trace(gw.url, endpoint="/echo") as t, connect(gw.url + "/echo", transport=transport) as client:
            await client.send(text)
            assert await client.recv(T) == text
            records = await t.until(lambda rs: records_of(rs, dir="out", data=f'a["{text}"]'))
            conn = records_of(records, dir="out", data=f'a["{text}"]')[0]["conn"]
            await asyncio.to_thread(api_command, gw.url, "close", {"conn": conn, "code": 3002, "reason": "bye"})
            await t.until(lambda rs: records_of(rs, conn=conn, sockjs="close"))
            return conn, t.records

    conn, records = asyncio.run(main())
    mine = records_of(records, conn=conn)
    assert all(r["transport"] == transport and r["kind"] == "sockjs" for r in mine), mine
    assert records_of(mine, dir="out", sockjs="open", data="o")
    assert records_of(mine, dir="in", sockjs="send", messages=1, data=f'["{text}"]')
    assert records_of(mine, dir="out", sockjs="messages", messages=1, data=f'a["{text}"]')
    assert records_of(mine, dir="out", sockjs="close", code=3002, reason="bye", data='c[3002,"bye"]')


def test_channel_filter_and_publications(gw):
    channel, other = unique("news"), unique("sport")

    async def subscriber(name: str):
        ws = await websockets.connect(gw.ws_url + "/live/websocket", open_timeout=T)
        hello = json.loads(await asyncio.wait_for(ws.recv(), T))
        await ws.send(json.dumps({"op": "subscribe", "channel": name, "id": 1}))
        assert json.loads(await asyncio.wait_for(ws.recv(), T))["type"] == "reply"
        return ws, hello["conn"]

    async def main():
        (a, a_id), (b, b_id) = await subscriber(channel), await subscriber(other)
        try:
            async with trace(gw.url, channel=channel) as t:
                for name in (other, channel):
                    status, body = await asyncio.to_thread(api_command, gw.url, "publish",
                                                           {"channel": name, "data": {"to": name}})
                    assert status == 200, body
                await a.send(json.dumps({"op": "ping", "id": 7}))
                await b.send(json.dumps({"op": "ping", "id": 8}))
                assert json.loads(await asyncio.wait_for(a.recv(), T))["channel"] == channel
                assert json.loads(await asyncio.wait_for(b.recv(), T))["channel"] == other
                assert json.loads(await asyncio.wait_for(b.recv(), T))["id"] == 8
                # A marker publication: every record due before it comes before it.
                status, body = await asyncio.to_thread(api_command, gw.url, "publish",
                                                       {"channel": channel, "data": "marker"})
                assert status == 200, body
                await t.before_marker(lambda r: r.get("dir") == "publish" and r.get("data") == "marker")
                return a_id, b_id, t.records
        finally:
            await a.close()
            await b.close()

    a_id, b_id, records = asyncio.run(main())
    [publication] = records_of(records, dir="publish")
    assert publication["kind"] == "publication" and publication["channel"] == channel
    assert json.loads(publication["data"]) == {"to": channel}
    assert isinstance(publication["offset"], int) and publication["offset"] >= 1
    assert "conn" not in publication
    delivered = [r for r in records_of(records, conn=a_id, dir="out") if '"type":"message"' in r["data"]]
    assert len(delivered) == 1 and json.loads(delivered[0]["data"])["data"] == {"to": channel}
    assert records_of(records, conn=a_id, dir="in")  # a subscriber's own frames too
    assert not records_of(records, conn=b_id), "frames of a connection not subscribed to the channel"
    assert not [r for r in records if other in r["data"]]


def test_endpoint_connection_user_and_regex_filters(gw):
    needle = unique("needle")

    async def hello(ws) -> str:
        return json.loads(await asyncio.wait_for(ws.recv(), T))["conn"]

    async def main():
        async with (
            trace(gw.url, endpoint="/other") as by_endpoint,
            trace(gw.url, user="alice") as by_user,
            trace(gw.url, match=r"needle-[0-9a-f]{10}") as by_regex,
            trace(gw.url, endpoint="/echo", match="^needle") as by_both,
        ):
            async with (
                websockets.connect(gw.ws_url + "/live/websocket", open_timeout=T) as first,
                websockets.connect(gw.ws_url + "/live/websocket", open_timeout=T) as second,
            ):
                first_id, second_id = await hello(first), await hello(second)
                async with trace(gw.url, conn=second_id) as by_conn:
                    async with (
                        websockets.connect(gw.ws_url + "/echo/websocket?token=" + token("alice")) as alice,
                        websockets.connect(gw.ws_url + "/echo/websocket?token=" + token("bob")) as bob,
                        websockets.connect(gw.ws_url + "/other/websocket") as anon,
                    ):
                        for ws, data in ((alice, "from alice"), (bob, needle), (anon, "from anon"),
                                         (anon, needle)):
                            await ws.send(data)
                            assert await asyncio.wait_for(ws.recv(), T) == data
                    for ws in (first, second):
                        await ws.send(json.dumps({"op": "ping", "id": 1}))
                        await asyncio.wait_for(ws.recv(), T)
                    await second.send(json.dumps({"op": "ping", "id": "marker"}))  # the marker
                    await asyncio.wait_for(second.recv(), T)
                    await by_conn.before_marker(lambda r: '"marker"' in (r.get("data") or ""))
            # Markers on connections of their own, made last: alice's matches by_user,
            # by_regex and by_both; the one on /other by_endpoint (and by_regex).
            markers = [f"needle-{os.urandom(5).hex()}" for _ in range(2)]
            for url, marker in ((gw.ws_url + "/echo/websocket?token=" + token("alice"), markers[0]),
                                (gw.ws_url + "/other/websocket", markers[1])):
                async with websockets.connect(url, open_timeout=T) as ws:
                    await ws.send(marker)
                    assert await asyncio.wait_for(ws.recv(), T) == marker
            for t in (by_endpoint, by_user, by_regex, by_both):
                await t.before_marker(lambda r: r.get("data") in markers, own_connection=True)
            return first_id, second_id, by_endpoint, by_user, by_regex, by_both, by_conn

    first_id, second_id, by_endpoint, by_user, by_regex, by_both, by_conn = asyncio.run(main())

    assert by_endpoint.hello["filter"] == {"endpoint": "/other"}
    assert {r["endpoint"] for r in by_endpoint.records} == {"/other"}
    assert {r["data"] for r in by_endpoint.records if r["kind"] == "ws-text"} == {"from anon", needle}

    assert by_user.hello["filter"] == {"user": "alice"}
    assert {r["user"] for r in by_user.records} == {"alice"}
    assert [r["data"] for r in by_user.records if r["kind"] == "ws-text"] == ["from alice", "from alice"]
    assert records_of(by_user.records, kind="ws-close", dir="in")

    assert {r["data"] for r in by_regex.records} == {needle}
    assert sorted((r["endpoint"], r["dir"]) for r in by_regex.records) == [
        ("/echo", "in"), ("/echo", "out"), ("/other", "in"), ("/other", "out")]
    assert [(r["endpoint"], r["dir"], r["data"]) for r in by_both.records] == [
        ("/echo", "in", needle), ("/echo", "out", needle)]

    assert {r["conn"] for r in by_conn.records} == {second_id}
    assert records_of(by_conn.records, dir="in", kind="ws-text")
    assert not records_of(by_conn.records, conn=first_id)


def test_bad_regex_and_wrong_key_are_refused_before_the_upgrade(gw):
    async def handshake(**query) -> int:
        url = gw.ws_url + "/admin/api/trace"
        async with aiohttp.ClientSession() as session:
            try:
                async with session.ws_connect(url, params=query):
                    return 101
            except aiohttp.WSServerHandshakeError as exc:
                return exc.status

    assert asyncio.run(handshake(key=API_KEY, match="(unclosed")) == 400
    assert asyncio.run(handshake(key="wrong")) == 401
    assert asyncio.run(handshake()) == 401
    assert asyncio.run(handshake(key=API_KEY)) == 101

    # A plain GET says why (a browser's WebSocket cannot show it), or checks a filter.
    status, body = admin(gw.url, "/admin/api/trace", match="(unclosed")
    assert status == 400 and body["error"]["code"] == "bad_request"
    assert "invalid regular expression '(unclosed'" in body["error"]["message"]
    status, body = admin(gw.url, "/admin/api/trace", endpoint="/echo", match="a+")
    assert status == 200 and body["result"]["filter"] == {"endpoint": "/echo", "match": "a+"}
    status, body = admin(gw.url, "/admin/api/trace", key="wrong")
    assert status == 401 and body["error"]["code"] == "unauthorized"


def _read_frame(raw: RawClient) -> tuple[int, bytes]:
    """One unmasked frame from the server."""
    def exactly(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = raw.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("closed")
            data += chunk
        return data

    first, second = exactly(2)
    length = second & 0x7F
    if length == 126:
        length = int.from_bytes(exactly(2), "big")
    elif length == 127:
        length = int.from_bytes(exactly(8), "big")
    return first & 0x0F, exactly(length)


def test_a_watcher_that_never_reads_does_not_slow_the_gateway(gw):
    """A watcher stops reading (4 KiB receive buffer). 12,000 echoes of 1 KB make 24,000
    records (26 MB of JSON, more than the kernel's buffers hold) for it: the gateway
    keeps at most 10,000 (then drops and counts), answers as fast as without the watcher
    (within a wide margin), and when the watcher reads again it gets every kept record,
    and the dropped count makes up the rest exactly."""
    count, window = 12_000, 200
    padding = "." * 1000

    async def echoes(tag: str) -> float:
        async with websockets.connect(gw.ws_url + "/echo/websocket", compression=None, open_timeout=T) as ws:
            start = time.monotonic()
            for base in range(0, count, window):
                for i in range(base, base + window):
                    await ws.send(f"{tag}-{i}{padding}")
                for i in range(base, base + window):
                    assert await asyncio.wait_for(ws.recv(), T) == f"{tag}-{i}{padding}"
            return time.monotonic() - start

    asyncio.run(echoes("warmup"))
    baseline = asyncio.run(echoes("baseline"))
    before = watchers(gw.url)
    with RawClient(gw.port, f"/admin/api/trace?key={API_KEY}&endpoint=/echo&match=%5Eflood", rcvbuf=4096) as stuck:
        assert wait_for(lambda: watchers(gw.url) == before + 1)
        stuck_time = asyncio.run(echoes("flood"))
        started = time.monotonic()
        status, _, _ = http(gw.url + "/healthz")
        assert status == 200 and time.monotonic() - started < 1.0
        print(f"{count} echoes: {baseline:.2f}s without a watcher, {stuck_time:.2f}s with one that does not read")
        assert stuck_time < 3 * baseline + 2.0, (baseline, stuck_time)

        # Now read: the kept records, then batches that keep the final dropped count.
        stuck.sock.settimeout(T)
        received = dropped = 0
        deadline = time.monotonic() + 20
        while received + dropped < 2 * count and time.monotonic() < deadline:
            opcode, payload = _read_frame(stuck)
            if opcode != 1:
                continue
            frame = json.loads(payload)
            if frame["type"] == "batch":
                assert len(frame["items"]) <= 500
                assert all(item["data"].startswith("flood-") for item in frame["items"])
                received += len(frame["items"])
                dropped = frame["dropped"]
        print(f"the watcher got {received} records, {dropped} dropped")
        assert received + dropped == 2 * count
        assert received >= 10_000, "fewer records than the queue keeps"
        # Kept: the queue (10,000), a batch being written, what the kernel's socket
        # buffers took before the watcher stopped (a few MB on loopback).
        assert dropped >= 2 * count - 10_000 - 500 - 8_000, "more records kept than the bounded queue allows"
