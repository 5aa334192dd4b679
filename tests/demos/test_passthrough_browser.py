"""Byte-exact pass-through seen from a browser (docs/bridge.md, "ZeroMQ"): on the demo
gateway (``make demo``: SUB, PULL, ``default = "endpoint:/broadcast"``), headless
Chromium holds the broadcast page with two more clients of /broadcast, sockjs-client and
the browser's own WebSocket, each recording what its ``onmessage`` got. What a program
sends as one frame to the SUB socket, what the talk's publish.php sends (unchanged), what
the three examples of docs/bridge.md send, and an ``/api/broadcast?endpoint=`` body all
arrive exactly as sent."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable

import pytest
import zmq
from demo_support import ROOT, DemoGateway
from playwright.sync_api import Page
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from support import require_php_zmq

pytestmark = pytest.mark.browser

OpenPage = Callable[..., Page]
WAIT_MS = 10_000

LISTEN = """() => new Promise((resolve, reject) => {
  window.got = {sockjs: [], ws: []};
  const sockjs = new SockJS("/broadcast", null, {transports: ["websocket"]});
  sockjs.onmessage = (e) => window.got.sockjs.push(e.data);
  const ws = new WebSocket(location.origin.replace(/^http/, "ws") + "/broadcast/websocket");
  ws.binaryType = "arraybuffer";
  ws.onmessage = (e) => window.got.ws.push(
    typeof e.data === "string" ? e.data : {binary: Array.from(new Uint8Array(e.data))});
  let open = 0;
  sockjs.onopen = ws.onopen = () => { if (++open === 2) resolve(); };
  setTimeout(() => reject(new Error("not both open")), 8000);
})"""


def listen(open_page: OpenPage) -> Page:
    page = open_page("/broadcast.html")
    page.evaluate(LISTEN)
    return page


def received(page: Page, count: int) -> dict[str, list]:
    """What both clients got, once each has ``count`` messages."""
    try:
        page.wait_for_function("(n) => window.got.sockjs.length >= n && window.got.ws.length >= n",
                               arg=count, timeout=WAIT_MS, polling=50)
    except PlaywrightTimeout:
        raise AssertionError(f"not {count} messages each: {page.evaluate('() => window.got')}") from None
    return page.evaluate("() => window.got")


def as_sent(page_value) -> bytes:
    """A message as the browser's WebSocket got it, as bytes: a text frame's UTF-8, or
    a binary frame's bytes."""
    if isinstance(page_value, dict):
        return bytes(page_value["binary"])
    return page_value.encode("utf-8")


def xpub(ctx: zmq.Context, address: str) -> zmq.Socket:
    """A PUB socket (XPUB) that has seen the gateway's subscription: nothing is dropped."""
    pub = ctx.socket(zmq.XPUB)
    pub.setsockopt(zmq.LINGER, 1000)
    pub.connect(address)
    assert pub.poll(5000), "the gateway's SUB socket never subscribed"
    assert pub.recv()[:1] == b"\x01"
    return pub


def test_sub_messages_reach_the_browser_byte_for_byte(open_page: OpenPage, demo: DemoGateway) -> None:
    page = listen(open_page)
    mark = uuid.uuid4().hex[:6]
    messages = [b'{"a": 1, "b": [1, 2]}', b'"quoted"', b'{"op": "stats"}', f"  {mark} \u2603 ".encode()]
    binary = b"\xff\xfe" + mark.encode()
    ctx = zmq.Context()
    try:
        pub = xpub(ctx, demo.sub)
        for message in [*messages, binary]:
            pub.send(message)
        got = received(page, len(messages) + 1)
    finally:
        ctx.destroy(linger=0)
    assert [as_sent(m) for m in got["ws"]] == [*messages, binary]
    assert isinstance(got["ws"][-1], dict)  # a binary frame
    # SockJS carries text: the same strings; the binary message as UTF-8 with U+FFFD.
    assert got["sockjs"] == [m.decode() for m in messages] + [binary.decode("utf-8", "replace")]
    # The page itself shows each line as it came.
    texts = page.eval_on_selector_all("#log > div", "ds => ds.map(d => d.textContent)")
    assert [t.split("  ", 1)[1] for t in texts[-len(messages) - 1:]] == got["sockjs"]


def test_publish_php_unchanged(open_page: OpenPage, demo: DemoGateway) -> None:
    """examples/php/publish.php as shipped: its MESSAGE is one frame, PUSHed to PULL by
    default, PUBlished to SUB with --pub; either way it arrives byte for byte."""
    php = require_php_zmq()
    page = listen(open_page)
    script = str(ROOT / "examples" / "php" / "publish.php")
    runs = [([f"--to={demo.pull}"], '{"a": 1, "b": [1, 2]}'), ([f"--to={demo.pull}"], '"quoted"'),
            # The SUB socket: a command there is a message; a long settle wait, so that
            # the slow joiner cannot lose it on a loaded machine.
            (["--pub", "--settle=1500", f"--to={demo.sub}"], '{"op": "stats"}')]
    for options, message in runs:
        result = subprocess.run([php, script, *options, message], capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stderr
    got = received(page, len(runs))
    assert got["ws"] == got["sockjs"] == [message for _, message in runs]


def doc_blocks() -> dict[str, str]:
    """The php, python and sh blocks of docs/bridge.md's "ZeroMQ" section."""
    doc = (ROOT / "docs" / "bridge.md").read_text()
    section = doc.split("\n## ZeroMQ\n", 1)[1].split("\n## ", 1)[0]
    return dict(re.findall(r"```(php|python|sh)\n(.*?)```", section, re.S))


def test_bridge_doc_examples(open_page: OpenPage, demo: DemoGateway) -> None:
    """The same message from the doc's three languages: each arrives byte for byte, and
    each one's command publishes to "news"."""
    blocks = doc_blocks()
    assert sorted(blocks) == ["php", "python", "sh"]
    php = require_php_zmq()
    page = listen(open_page)
    from sockway.app import Client

    gateway = Client(demo.url, demo.key)
    before = gateway.history("news", limit=0)["offset"]
    env = dict(os.environ, PATH=f"{os.path.dirname(sys.executable)}:{os.environ.get('PATH', '')}")
    commands = {"php": [php, "-r", demo.localize(blocks["php"])],
                "python": [sys.executable, "-c", demo.localize(blocks["python"])],
                "sh": ["bash", "-c", demo.localize(blocks["sh"])]}
    for language in ("php", "python", "sh"):
        result = subprocess.run(commands[language], capture_output=True, text=True, timeout=30, cwd=ROOT, env=env)
        assert result.returncode == 0, (language, result.stdout, result.stderr)
    got = received(page, 3)
    assert got["ws"] == got["sockjs"] == ['{"a": 1, "b": [1, 2]}'] * 3
    deadline = time.monotonic() + 10
    while gateway.history("news", limit=0)["offset"] < before + 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    news = gateway.history("news", limit=3)["publications"]
    assert [p["data"] for p in news] == [{"title": "hi"}] * 3


def test_api_broadcast_raw_body(open_page: OpenPage, demo: DemoGateway) -> None:
    page = listen(open_page)
    bodies = [b'{"a": 1, "b": [1, 2]}', b'"quoted"', b'{"op": "stats"}']
    for body in bodies:
        request = urllib.request.Request(demo.url + "/api/broadcast?endpoint=/broadcast", data=body,
                                         headers={"Authorization": f"Bearer {demo.key}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200
    got = received(page, len(bodies))
    assert got["ws"] == got["sockjs"] == [b.decode() for b in bodies]
