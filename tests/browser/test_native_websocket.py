"""A plain browser WebSocket (no SockJS) against the raw endpoint /echo/websocket, from
a page of another origin: text comes back as text, an ArrayBuffer as binary."""

from __future__ import annotations

import pytest
from browser_harness import BrowserPage

pytestmark = pytest.mark.browser


def _open(page: BrowserPage) -> str:
    url = page.gateway.replace("http", "ws", 1) + "/echo/websocket"
    conn = page.call("openWebSocket", url)
    page.wait("T.state(args[0]).opened || T.state(args[0]).close !== null", conn,
              what=f"WebSocket {url} to open")
    assert page.state(conn)["opened"], f"{page.state(conn)}\n  {page.report()}"
    return conn


def test_text_is_echoed_as_text(browser_page: BrowserPage) -> None:
    conn = _open(browser_page)
    texts = ["hello", "zażółć 😀 𝄞 \u2028\ufff0\uffff \x00", "x" * 70_000]
    for text in texts:
        browser_page.call("send", conn, text)
    browser_page.wait_received(conn, len(texts))
    got = browser_page.call("messages", conn)
    assert got == [{"type": "text", "data": t} for t in texts]


def test_array_buffer_is_echoed_as_binary(browser_page: BrowserPage) -> None:
    conn = _open(browser_page)
    sizes = [256, 1, 0, 70_000]
    for size in sizes:
        browser_page.call("sendBytes", conn, size)
    browser_page.wait_received(conn, len(sizes))
    for i, size in enumerate(sizes):
        assert browser_page.call("checkBytes", conn, i, size) is None, browser_page.report()
    assert browser_page.state(conn)["received"] == len(sizes)
    browser_page.call("close", conn)
    close = browser_page.wait_closed(conn)
    assert close == {"code": 1000, "reason": "done", "wasClean": True}
