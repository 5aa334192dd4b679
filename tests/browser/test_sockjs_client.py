"""The unmodified sockjs-client 1.6.1 (npm), in headless Chromium, against the gateway's
SockJS test server, over every transport the client offers a cross-origin page.

Each test forces one transport (``{transports: [name]}``) and checks that the connection
really uses it, then echoes exactly: ASCII, unicode with astral characters, every
character of the server's escape set, a sample of the client's, a 64 KiB message and
100 messages in a row; the 64 KiB message once more with the browser's uplink slowed
down, so that request bodies reach the server in pieces. /close must end the session
with 3000 "Go away!", and /broadcast must carry a message from one page to another.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest
from browser_harness import BrowserPage

pytestmark = pytest.mark.browser

# What sockjs-client 1.6.1 offers a page whose origin differs from the server's
# (htmlfile proper needs the same origin; xdr-* are Internet Explorer's).
TRANSPORTS = [
    "websocket",
    "xhr-streaming",
    "eventsource",
    "iframe-eventsource",
    "iframe-htmlfile",
    "xhr-polling",
    "iframe-xhr-polling",
    "jsonp-polling",
]

# Sample name -> its length in UTF-16 code units (page.html builds the samples).
SAMPLES = {
    "ascii": 26 + 95,
    "unicode": 65,
    "server_escapes": 32 + 4 + 8 + 16 + 16,
    "client_escapes": 33 + 1 + 5 + 3 + 256 + 1,
    "big": 64 * 1024,
}

BURST = 100


def _echo_params() -> list:
    return [pytest.param(t, sample, id=f"{t}-{sample}") for t in TRANSPORTS for sample in SAMPLES]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_opens_with_the_forced_transport(browser_page: BrowserPage, transport: str) -> None:
    conn = browser_page.open("/echo", transport)
    assert browser_page.state(conn)["transport"] == transport
    # The iframe transports run in the gateway's iframe page, on the gateway's origin.
    iframe = browser_page.gateway + "/echo/iframe.html"
    in_iframe = any(url.startswith(iframe) for url in browser_page.frame_urls())
    assert in_iframe == transport.startswith("iframe-"), browser_page.frame_urls()


@pytest.mark.parametrize(("transport", "sample"), _echo_params())
def test_echo_is_exact(browser_page: BrowserPage, transport: str, sample: str) -> None:
    assert browser_page.call("sampleLength", sample) == SAMPLES[sample]
    conn = browser_page.open("/echo", transport)
    assert browser_page.state(conn)["transport"] == transport
    browser_page.call("sendSample", conn, sample)
    browser_page.wait_received(conn, 1)
    difference = browser_page.call("checkSample", conn, sample)
    assert difference is None, f"{transport} {sample}: {difference}\n  {browser_page.report()}"
    assert browser_page.state(conn)["close"] is None


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_big_message_over_a_slow_uplink(slow_uplink_page: BrowserPage, transport: str) -> None:
    """The 64 KiB message again, with what the browser sends cut into 4 KiB pieces
    a few milliseconds apart: a request body must be read whole, however it arrives."""
    page = slow_uplink_page
    conn = page.open("/echo", transport)
    page.call("sendSample", conn, "big")
    page.wait_received(conn, 1)
    difference = page.call("checkSample", conn, "big")
    assert difference is None, f"{transport}: {difference}\n  {page.report()}"


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_many_messages_arrive_in_order(browser_page: BrowserPage, transport: str) -> None:
    conn = browser_page.open("/echo", transport)
    browser_page.call("sendBurst", conn, BURST)
    browser_page.wait_received(conn, BURST)
    difference = browser_page.call("checkBurst", conn, BURST)
    assert difference is None, f"{transport}: {difference}\n  {browser_page.report()}"


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_server_close_reaches_the_client(browser_page: BrowserPage, transport: str) -> None:
    conn = browser_page.open("/close", transport)
    close = browser_page.wait_closed(conn)
    assert close == {"code": 3000, "reason": "Go away!", "wasClean": True}, browser_page.report()
    assert browser_page.state(conn)["received"] == 0


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_broadcast_reaches_another_page(browser_page: BrowserPage, open_page: Callable[[], BrowserPage],
                                        transport: str) -> None:
    listener, speaker = browser_page, open_page()  # two browser contexts
    heard = listener.open("/broadcast", transport)
    said = speaker.open("/broadcast", transport)
    text = f"to everyone over {transport} {uuid.uuid4().hex} ż😀"
    speaker.call("send", said, text)
    listener.wait_received(heard, 1)
    speaker.wait_received(said, 1)
    assert listener.call("messages", heard) == [text], listener.report()
    assert speaker.call("messages", said) == [text], speaker.report()
