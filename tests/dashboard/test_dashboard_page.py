"""The dashboard (/admin/) in headless Chromium against a real gateway: signing in (a
wrong key, an admin API that is off, the key kept for the tab), live counts and plots
(a screenshot that is not blank), the connection list and its search, the channel
inspector, the frame tracer (filters, pause, the row limit, a bad regular expression)
and a gateway that goes away.

``SOCKWAY_DASHBOARD_SCREENSHOT=docs/dashboard.png`` also saves the overview there,
after a minute of traffic so that the plots have something to show.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from dashboard_png import decode
from dashboard_support import API_KEY, T, api_command, dashboard_page, stats, token, wait_for
from websockets.sync.client import ClientConnection, connect

from support import ROOT, config_gateway

pytestmark = [pytest.mark.browser, pytest.mark.timeout(150)]

SCREENSHOT = os.environ.get("SOCKWAY_DASHBOARD_SCREENSHOT")


@contextlib.contextmanager
def live_client(gw, channel: str | None = None, user: str | None = None) -> Iterator[tuple[ClientConnection, str]]:
    """A channels-mode client (subscribed to ``channel``), and its connection id."""
    query = f"?token={token(user)}" if user else ""
    with connect(gw.ws_url + "/live/websocket" + query, open_timeout=T, max_queue=None) as ws:
        conn = json.loads(ws.recv(T))["conn"]
        if channel:
            ws.send(json.dumps({"op": "subscribe", "channel": channel, "id": 1}))
            assert json.loads(ws.recv(T))["type"] == "reply"
        yield ws, conn


@contextlib.contextmanager
def traffic(gw, channel: str) -> Iterator[None]:
    """Echoes (20 a second) and publications (2 a second) until the block ends."""
    stop = threading.Event()

    def run() -> None:
        with connect(gw.ws_url + "/echo/websocket", open_timeout=T) as ws:
            i = 0
            while not stop.wait(0.05):
                i += 1
                ws.send(f"tick {i} " + "." * (i % 50))
                ws.recv(T)
                if i % 10 == 0:
                    api_command(gw.url, "publish", {"channel": channel, "data": {"tick": i}})

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(T)


def test_wrong_key_is_refused_with_a_message(gw, chromium):
    with dashboard_page(chromium, gw.url) as page:
        assert page(lambda p: p.is_visible("#key-input"))
        page.sign_in("not-the-key")
        assert page.wait_text("#login-error", "Wrong API key") == "Wrong API key: the gateway refused it."
        assert page(lambda p: p.is_hidden("#app") and p.is_visible("#login"))
        assert page(lambda p: p.evaluate("sessionStorage.length")) == 0
        page.sign_in(API_KEY)
        page(lambda p: p.wait_for_selector("#app", state="visible"))
        assert page(lambda p: p.is_hidden("#login-error"))
        assert not page.errors


def test_admin_api_off_is_explained(chromium):
    with config_gateway('[[endpoint]]\nprefix = "/echo"\nmode = "echo"\n') as plain, \
            dashboard_page(chromium, plain.url) as page:
        page.sign_in("anything")
        message = page.wait_text("#login-error", "admin API is off")
        assert "set [api] key in its configuration (or SOCKWAY_API_KEY)" in message


def test_overview_shows_live_counts_and_plots(gw, chromium):
    channel = f"plot{uuid.uuid4().hex[:8]}"
    with (
        live_client(gw, channel),
        live_client(gw, channel),
        dashboard_page(chromium, gw.url) as page,
        traffic(gw, channel),
    ):
        page.sign_in(API_KEY)
        count = stats(gw.url)["connections"]
        assert page.wait_text("#stat-connections", str(count)) == str(count)
        with live_client(gw):
            assert page.wait_text("#stat-connections", str(count + 1)) == str(count + 1)
            assert page.wait_text("#endpoints-table tr[data-endpoint='/live']", "channels")
            row = page.text("#endpoints-table tr[data-endpoint='/live']")
            assert "websocket 3" in row, row
        assert page.wait_text("#stat-connections", str(count)) == str(count)
        # Rates need two polls; the echoes make them positive.
        page(lambda p: p.wait_for_function(
            "() => parseFloat(document.getElementById('stat-msg-in').textContent) > 0", timeout=T * 1000))
        assert page.text("#stat-bytes-in").endswith("/s")
        assert page.text("#stat-broker") == "up"
        assert "websocket" in page.text("#endpoints-table")
        assert "memory" in page.text("#gateway-info")
        assert page.text("#status-text").startswith("live · node ")

        time.sleep(60 if SCREENSHOT else 3)  # some history in the plots
        png = page(lambda p: p.screenshot())
        if SCREENSHOT:
            Path(SCREENSHOT if Path(SCREENSHOT).is_absolute() else ROOT / SCREENSHOT).write_bytes(png)

        # The plots are drawn: each canvas has pixels of the series' colour.
        drawn = page(lambda p: p.evaluate("""() => ['chart-conn', 'chart-msg', 'chart-bytes'].map((id) => {
            const c = document.getElementById(id);
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            let blue = 0;
            for (let i = 0; i < d.length; i += 4) if (d[i] < 80 && d[i + 2] > 200 && d[i + 3] > 200) blue++;
            return blue;
        })"""))
        assert all(n > 15 for n in drawn), drawn

        # The key is kept for this tab: a reload goes straight to the dashboard.
        page(lambda p: p.reload())
        page(lambda p: p.wait_for_selector("#app", state="visible"))
        assert page(lambda p: p.is_hidden("#login"))
        assert not page.errors, page.errors

    image = decode(png)
    assert (image.width, image.height) == (1400, 1000)
    colours = image.colours(step=2)
    pixels = sum(colours.values())
    assert len(colours) > 200, f"only {len(colours)} colours: a blank page?"
    assert colours.most_common(1)[0][1] < 0.8 * pixels
    assert image.pixel(5, 5)[:3] == (0x11, 0x18, 0x27)  # the header bar


def test_connection_list_and_search(gw, chromium):
    with live_client(gw, f"list{uuid.uuid4().hex[:6]}", user="frank") as (_, conn), \
            live_client(gw) as (_, other), dashboard_page(chromium, gw.url) as page:
        page.sign_in(API_KEY)
        page(lambda p: p.click("#tabs button[data-tab=connections]"))
        row = page.wait_text(f"#conn-table tr[data-conn='{conn}']", "frank")
        assert "/live" in row and "websocket" in row and "127.0.0.1" in row and "list" in row
        assert page.wait_text(f"#conn-table tr[data-conn='{other}']", "/live")

        page(lambda p: p.fill("#conn-search", "frank"))
        page(lambda p: p.wait_for_selector(f"#conn-table tr[data-conn='{other}']", state="detached"))
        assert page(lambda p: p.locator("#conn-table tbody tr").count()) == 1
        assert page.text("#conn-count") == "1 matching"

        page(lambda p: p.fill("#conn-search", "no-such-connection"))
        page(lambda p: p.wait_for_selector("#conn-empty", state="visible"))
        assert page(lambda p: p.locator("#conn-table tbody tr").count()) == 0

        # Trace from the list: the tracer opens on that connection.
        page(lambda p: p.fill("#conn-search", conn))
        page(lambda p: p.click(f"#conn-table tr[data-conn='{conn}'] button"))
        assert page.wait_text("#trace-state", f"Tracing conn={conn}")
        assert page(lambda p: p.input_value("#tf-conn")) == conn


def test_channel_inspector(gw, chromium):
    channel = f"inspect{uuid.uuid4().hex[:8]}"
    with live_client(gw, channel, user="gina") as (_, gina), live_client(gw, channel) as (_, anon), \
            dashboard_page(chromium, gw.url) as page:
        for i in range(3):
            assert api_command(gw.url, "publish", {"channel": channel, "data": {"headline": f"story {i}"}})[0] == 200
        page.sign_in(API_KEY)
        page(lambda p: p.click("#tabs button[data-tab=channels]"))
        assert "2 sub" in page.wait_text(f"#channel-list li[data-channel='{channel}']", channel)
        page(lambda p: p.click(f"#channel-list li[data-channel='{channel}']"))
        subscribers = page.wait_text("#chan-subscribers", gina)
        assert anon in subscribers and "gina" in subscribers
        presence = page.text("#chan-presence")
        assert gina in presence and '"user":"gina"' in presence
        history = page.text("#chan-history")
        assert '{"headline":"story 2"}' in history and '{"headline":"story 0"}' in history
        assert "offset 3" in page.text("#chan-meta")
        # Live: a new publication and a new subscriber show up.
        api_command(gw.url, "publish", {"channel": channel, "data": "breaking"})
        assert page.wait_text("#chan-history", "breaking")
        with live_client(gw, channel) as (_, third):
            assert page.wait_text("#chan-subscribers", third)
        page(lambda p: p.click("#chan-trace"))
        assert page.wait_text("#trace-state", f"Tracing channel={channel}")


def test_trace_panel(gw, chromium):
    channel = f"trace{uuid.uuid4().hex[:8]}"
    with live_client(gw, channel) as (ws, conn), live_client(gw, channel) as (other, _), \
            dashboard_page(chromium, gw.url) as page:
        page.sign_in(API_KEY)
        page(lambda p: p.click("#tabs button[data-tab=trace]"))
        page(lambda p: p.fill("#tf-conn", conn))
        page(lambda p: p.click("#trace-start"))
        assert page.wait_text("#trace-state", f"Tracing conn={conn}")

        marker = f"hello-{uuid.uuid4().hex[:8]}"
        other.send(json.dumps({"op": "message", "data": "not traced"}))
        ws.send(json.dumps({"op": "message", "data": marker}))
        row = page.wait_text("#trace-body tr[data-dir='in']", marker)
        assert "← in" in row and conn in row and "/live · websocket" in row and "ws-text" in row
        assert "not traced" not in page.text("#trace-body")

        # Paused: records wait, and come on resume.
        page(lambda p: p.click("#trace-pause"))
        assert page.wait_text("#trace-state", "Paused")
        held = f"held-{uuid.uuid4().hex[:8]}"
        ws.send(json.dumps({"op": "message", "data": held}))
        assert page.wait_text("#trace-counts", "waiting (paused)")
        assert held not in page.text("#trace-body")
        page(lambda p: p.click("#trace-pause"))
        assert page.wait_text("#trace-body", held)
        assert page.wait_text("#trace-state", "Tracing")

        # At most the chosen number of rows, the newest kept. (Pings: their replies carry
        # the marker too, and the replies to a burst may come after all of its requests.)
        page(lambda p: p.select_option("#tf-max", "200"))
        for i in range(260):
            ws.send(json.dumps({"op": "ping", "id": f"bulk-{i}"}))
        assert page.wait_text("#trace-body", '"bulk-259"')
        assert page(lambda p: p.locator("#trace-body tr").count()) == 200
        assert "bulk-0\"" not in page.text("#trace-body")

        # A bad regular expression is explained; stopping works.
        page(lambda p: p.click("#trace-start"))  # Stop
        assert page.wait_text("#trace-state", "Not tracing")
        page(lambda p: p.fill("#tf-match", "(unclosed"))
        page(lambda p: p.click("#trace-start"))
        assert "invalid regular expression '(unclosed'" in page.wait_text("#trace-error", "invalid regular")
        assert page(lambda p: p.input_value("#tf-match")) == "(unclosed"

        # Channel filter: the publication itself is traced.
        page(lambda p: p.fill("#tf-match", ""))
        page(lambda p: p.fill("#tf-conn", ""))
        page(lambda p: p.fill("#tf-channel", channel))
        page(lambda p: p.click("#trace-clear"))
        page(lambda p: p.click("#trace-start"))
        assert page.wait_text("#trace-state", f"Tracing channel={channel}")
        assert page(lambda p: p.is_hidden("#trace-error"))
        api_command(gw.url, "publish", {"channel": channel, "data": {"news": marker}})
        row = page.wait_text("#trace-body tr[data-dir='publish']", marker)
        assert "✱ pub" in row and channel in row and "publication" in row
        assert not page.errors


def test_gateway_down_shows_a_banner(chromium):
    config = (f'[server]\nshutdown_timeout = 1\n[api]\nkey = "{API_KEY}"\n'
              '[[endpoint]]\nprefix = "/echo"\nmode = "echo"\n')
    with config_gateway(config) as short, dashboard_page(chromium, short.url) as page:
        page.sign_in(API_KEY)
        page(lambda p: p.click("#tabs button[data-tab=trace]"))
        page(lambda p: p.click("#trace-start"))
        assert page.wait_text("#trace-state", "Tracing everything")
        short.stop()
        banner = page.wait_text("#banner", "Cannot reach the gateway")
        assert f"127.0.0.1:{short.port}" in banner and "retrying every second" in banner
        assert page.text("#status-text") == "unreachable"
        assert "The trace ended" in page.wait_text("#trace-error", "The trace ended")
        assert wait_for(lambda: page(lambda p: p.is_visible("#banner")))
