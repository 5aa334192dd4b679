"""The unmodified sockjs-client 1.6.1 in headless Chromium, through a plain round-robin
nginx in front of two nodes sharing sessions (Redis, NATS), on every transport it
offers a cross-origin page except WebSocket (one TCP connection: nothing to share),
the iframe ones included: 100 messages echo in order while the session's requests are
spread over both nodes (nginx's log says so), publications made through either node
arrive, and the application's close, sent to the node that does not own the session,
closes it. Without shared sessions (each node on its own memory broker) the same page
fails.
"""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Iterator

import pytest
from browser_harness import BrowserPage, static_server  # tests/browser (conftest's harness)
from harness import ENGINES, KEY, RoundRobin, round_robin
from playwright.sync_api import Browser

from support import ROOT, chromium_browser, require_file

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]

SOCKJS_CLIENT = ROOT / "node_modules" / "sockjs-client" / "dist" / "sockjs.min.js"
TRANSPORTS = ["xhr-streaming", "eventsource", "iframe-eventsource", "iframe-htmlfile", "xhr-polling",
              "iframe-xhr-polling", "jsonp-polling"]
RECEIVING = re.compile(r"/(xhr|xhr_streaming|eventsource|htmlfile|jsonp)(\?|$)")
BURST = 100


@pytest.fixture(scope="module")
def chromium() -> Iterator[Browser]:
    """Chromium for this module only (see chromium_browser)."""
    with chromium_browser() as browser:
        yield browser


@pytest.fixture(scope="module")
def page_origin() -> Iterator[str]:
    with static_server(require_file(SOCKJS_CLIENT, ": npm install sockjs-client@1.6.1")) as url:
        yield url


@pytest.fixture(scope="module", params=ENGINES)
def rr(request) -> Iterator[RoundRobin]:
    with round_robin(request.param) as cluster:
        yield cluster


def gateway(rr: RoundRobin) -> str:
    """The gateway as the browser reaches it: another host name than the page's, so
    every request is cross-origin and the iframe transports run in an iframe."""
    return f"http://localhost:{rr.nginx.port}"


@pytest.fixture
def page(chromium: Browser, page_origin: str, rr: RoundRobin) -> Iterator[BrowserPage]:
    context = chromium.new_context()
    try:
        yield BrowserPage(context, page_origin, gateway(rr))
    finally:
        context.close()


def api(node, op: str, **fields) -> dict:
    request = urllib.request.Request(
        node.url + f"/api/{op}", data=json.dumps(fields).encode(), method="POST",
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as r:
        return json.loads(r.read())["result"]


def sessions_since(rr: RoundRobin, start: int, prefix: str) -> dict[str, dict[str, int]]:
    """Session id -> its receiving requests per upstream, from the requests nginx logged
    after ``start`` (a request is logged when it ends: a stream still open is not)."""
    out: dict[str, dict[str, int]] = {}
    for upstream, _status, uri in rr.nginx.log()[start:]:
        match = re.match(rf"^{prefix}/[^/]+/([^/]+)/", uri)
        if match:
            counts = out.setdefault(match.group(1), {})
            if RECEIVING.search(uri):
                counts[upstream] = counts.get(upstream, 0) + 1
    return out


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_echo_in_order_across_the_nodes(rr: RoundRobin, page: BrowserPage, transport: str) -> None:
    start = len(rr.nginx.log())
    conn = page.open("/echo", transport)
    assert page.state(conn)["transport"] == transport
    page.call("sendBurst", conn, BURST)
    page.wait_received(conn, BURST, timeout=15_000)
    difference = page.call("checkBurst", conn, BURST)
    assert difference is None, f"{transport}: {difference}\n  {page.report()}"
    page.call("close", conn)
    sessions = sessions_since(rr, start, "/echo")
    assert len(sessions) == 1, sessions
    [(sid, receiving)] = sessions.items()
    served = rr.nginx.upstreams_of(sid)
    assert set(served) == set(rr.ids), served  # every node served requests of the session
    if "polling" in transport:
        assert set(receiving) == set(rr.ids), receiving  # polls answered by both nodes


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_channel_publications_and_close_through_any_node(rr: RoundRobin, page: BrowserPage,
                                                        transport: str) -> None:
    conn = page.open("/ch", transport)
    page.wait_received(conn, 1)
    connected = json.loads(page.call("messages", conn)[0])
    assert connected["type"] == "connected"
    owner = connected["conn"].partition(".")[0]
    other = next(n for n in rr.nodes if rr.ids[f"127.0.0.1:{n.port}"] != owner)
    channel = f"browser-{transport}-{rr.engine}"
    page.call("send", conn, json.dumps({"op": "subscribe", "channel": channel, "id": 1}))
    page.wait_received(conn, 2)
    for i in range(10):
        api(rr.nodes[i % 2], "publish", channel=channel, data=i)
    page.wait_received(conn, 12)
    got = [json.loads(m) for m in page.call("messages", conn)[2:]]
    assert [m["data"] for m in got] == list(range(10)), page.report()
    api(other, "close", conn=connected["conn"], code=4000, reason="bye")
    assert page.wait_closed(conn) == {"code": 4000, "reason": "bye", "wasClean": True}


@pytest.mark.parametrize("transport", ["xhr-streaming", "xhr-polling", "iframe-eventsource"])
def test_without_shared_sessions_the_page_fails(chromium: Browser, page_origin: str, transport: str) -> None:
    with round_robin("memory") as separate:
        context = chromium.new_context()
        try:
            page = BrowserPage(context, page_origin, gateway(separate))
            conn = page.call("open", page.gateway + "/echo", transport, 3000)
            page.wait("T.state(args[0]).opened || T.state(args[0]).close !== null", conn, what="open")
            page.call("sendBurst", conn, 20)
            page.wait("T.state(args[0]).received >= 20 || T.state(args[0]).close !== null", conn,
                      what="the burst or a close", timeout=15_000)
            state = page.state(conn)
            broken = state["close"] is not None or page.call("checkBurst", conn, 20) is not None
            assert broken, f"{transport} worked without shared sessions: {state}\n  {page.report()}"
        finally:
            context.close()
