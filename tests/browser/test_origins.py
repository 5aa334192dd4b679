"""The origin allow-list in Chromium, on transports that cannot carry an Origin.

A gateway whose allow-list names the test page's origin (http://127.0.0.1:<A>; the
gateway is http://localhost:<B>): sockjs-client on that page works over every transport
it offers a cross-origin page, the iframe ones included. A page of another origin
(http://127.0.0.1:<C>) does what an attacker's page would, without sockjs-client (whose
info request is refused by origin at once): a ``<script>`` load of a jsonp poll, which
sends no Origin, and the gateway's iframe page embedded and driven over postMessage as
sockjs-client does, whose requests carry the gateway's own origin. Neither reads
anything: the jsonp poll is refused for its Referer, the iframe page is not rendered
(Content-Security-Policy frame-ancestors). The allowed page reads through both.
"""

from __future__ import annotations

import itertools
import json
import urllib.request
from collections.abc import Callable, Iterator

import pytest
from browser_harness import WAIT_MS, BrowserPage, static_server
from playwright.sync_api import Browser
from test_sockjs_client import TRANSPORTS

from support import config_gateway

pytestmark = pytest.mark.browser

SESSIONS = itertools.count()


@pytest.fixture(scope="module")
def evil_origin(sockjs_client) -> Iterator[str]:
    """Another origin serving the same page, which the gateway does not allow."""
    with static_server(sockjs_client) as url:
        yield url


@pytest.fixture(scope="module")
def gateway(page_origin: str) -> Iterator[str]:
    """A gateway allowing the test page's origin only; its URL as the browser reaches it."""
    config = f"""
[server]
allowed_origins = ["{page_origin}"]
shutdown_timeout = 1

[[endpoint]]
prefix = "/echo"
mode = "echo"

[[endpoint]]
prefix = "/broadcast"
mode = "broadcast"
"""
    with config_gateway(config) as proc:
        yield f"http://localhost:{proc.port}"


@pytest.fixture
def page_of(chromium: Browser, gateway: str) -> Iterator[Callable[[str], BrowserPage]]:
    """Pages loaded from a given origin, each in a fresh browser context."""
    contexts = []

    def factory(origin: str) -> BrowserPage:
        context = chromium.new_context()
        contexts.append(context)
        return BrowserPage(context, origin, gateway)

    yield factory
    for context in contexts:
        context.close()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_an_allowed_page_works_over_every_transport(page_of, page_origin: str, transport: str) -> None:
    page = page_of(page_origin)
    conn = page.open("/echo", transport)
    assert page.state(conn)["transport"] == transport
    text = f"through the allow-list over {transport} ż😀"
    page.call("send", conn, text)
    page.wait_received(conn, 1)
    assert page.call("messages", conn) == [text], page.report()


JSONP_READ = """([url]) => new Promise((resolve) => {
  const name = "leak" + Math.random().toString(36).slice(2);
  const script = document.createElement("script");
  const timer = setTimeout(() => resolve({timeout: true}), args_timeout);
  window[name] = (frame) => { clearTimeout(timer); resolve({read: frame}); };
  script.onerror = () => { clearTimeout(timer); resolve({refused: true}); };
  script.src = url + "?c=" + name;
  document.head.appendChild(script);
})""".replace("args_timeout", str(WAIT_MS))


def _broadcast(gateway: str, text: str) -> None:
    """Say ``text`` on /broadcast from a program (xhr-polling, no Origin)."""
    base = f"{gateway}/broadcast/000/speaker{next(SESSIONS)}"
    with urllib.request.urlopen(urllib.request.Request(base + "/xhr", method="POST"), timeout=5) as r:
        assert r.read() == b"o\n"
    request = urllib.request.Request(base + "/xhr_send", data=json.dumps([text]).encode(), method="POST")
    with urllib.request.urlopen(request, timeout=5) as r:
        assert r.status == 204


@pytest.mark.parametrize("allowed", [True, False], ids=["allowed-page", "other-origin"])
def test_jsonp_reads_only_from_an_allowed_page(page_of, page_origin: str, evil_origin: str, gateway: str,
                                               allowed: bool) -> None:
    page = page_of(page_origin if allowed else evil_origin)
    poll = f"{gateway}/broadcast/000/reader{next(SESSIONS)}/jsonp"
    with page.page.expect_response(lambda r: "/jsonp?c=leak" in r.url) as response:
        first = page.page.evaluate(JSONP_READ, [poll])
    if not allowed:
        assert first == {"refused": True}, page.report()
        assert response.value.status == 403, page.report()
        return
    assert first == {"read": "o"}, page.report()
    _broadcast(gateway, "for the allowed page only")
    assert page.page.evaluate(JSONP_READ, [poll]) == {"read": 'a["for the allowed page only"]'}, page.report()


IFRAME_DRIVE = """([gateway, session]) => {
  // What sockjs-client does for an iframe transport (lib/transport/iframe.js): embed
  // <gateway>/iframe.html#<window id>, wait for its "s", answer with the transport to
  // run and its URLs, then relay what the iframe posts back.
  const wid = Math.random().toString(36).slice(2, 10);
  const attempt = window.attempt = {seen: [], read: null};
  const iframe = document.createElement("iframe");
  iframe.addEventListener("load", () => attempt.seen.push("load"));
  window.addEventListener("message", (e) => {
    let m;
    try { m = JSON.parse(e.data); } catch (x) { return; }
    if (m.windowId !== wid) return;
    attempt.seen.push(m.type);
    if (m.type === "s") {
      const data = JSON.stringify([SockJS.version, "xhr-polling", gateway + "/echo/000/" + session,
                                   gateway + "/echo"]);
      iframe.contentWindow.postMessage(JSON.stringify({windowId: wid, type: "s", data: data}), gateway);
    } else if (m.type === "t" && attempt.read === null) {
      attempt.read = m.data;
    }
  });
  iframe.src = gateway + "/echo/iframe.html#" + wid;
  document.body.appendChild(iframe);
}"""


@pytest.mark.parametrize("allowed", [True, False], ids=["allowed-page", "other-origin"])
def test_the_iframe_page_runs_only_in_an_allowed_page(page_of, page_origin: str, evil_origin: str, gateway: str,
                                                      allowed: bool) -> None:
    page = page_of(page_origin if allowed else evil_origin)
    session = f"framed{next(SESSIONS)}"
    if allowed:
        page.page.evaluate(IFRAME_DRIVE, [gateway, session])
        page.wait("window.attempt.read !== null", what="the open frame through the iframe page")
        assert page.page.evaluate("window.attempt.read") == "o"
        return
    # Chromium says why it does not render the frame, in the embedding page's console,
    # and loads its error page in its place: the iframe page's script never runs.
    with page.page.expect_console_message(lambda m: "frame-ancestors" in m.text) as refusal:
        page.page.evaluate(IFRAME_DRIVE, [gateway, session])
    assert f"\"frame-ancestors 'self' {page_origin}\"" in refusal.value.text, refusal.value.text
    page.wait("window.attempt.seen.includes('load')", what="the blocked frame to load its error page")
    assert page.page.evaluate("window.attempt.seen") == ["load"], page.report()
    assert "chrome-error://chromewebdata/" in page.frame_urls(), page.frame_urls()
