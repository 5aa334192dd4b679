"""The demos end to end, as ``make demo`` serves them (demos/sockway.toml on free ports),
in headless Chromium: chat between two browsers and its history for a newcomer, the
shared canvas, live logs from Python's logging and from PHP, the TCP tunnel both ways,
the broadcast page fed by the commands it shows, and the index page's links."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable

import pytest
from demo_support import (
    ROOT,
    WAIT_MS,
    WWW,
    DemoGateway,
    LineClient,
    command_lines,
    page_commands,
    run_shell,
)
from playwright.sync_api import Page
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from support import require_php_zmq, require_program

pytestmark = pytest.mark.browser

OpenPage = Callable[..., Page]


def log_lines(page: Page) -> list[str]:
    return page.eval_on_selector_all("#log > div", "divs => divs.map(d => d.textContent)")


def wait_log(page: Page, text: str, timeout: int = WAIT_MS) -> None:
    """Until a line of the page's #log contains ``text``."""
    try:
        page.wait_for_function(
            "(text) => [...document.querySelectorAll('#log > div')].some(d => d.textContent.includes(text))",
            arg=text, timeout=timeout, polling=50)
    except PlaywrightTimeout:
        raise AssertionError(f"{text!r} never appeared in {page.url}; the log shows {log_lines(page)!r}") from None


def say(page: Page, text: str) -> None:
    """Type ``text`` in the page's input and press Enter (the form is submitted)."""
    page.fill("#input", text)
    page.press("#input", "Enter")


# -- chat --------------------------------------------------------------------------------------------


def test_chat_between_two_browsers(open_page: OpenPage) -> None:
    alice = open_page("/chat.html")
    bob = open_page("/chat.html")
    alice.fill("#name", "alice")
    alice.dispatch_event("#name", "change")
    bob.fill("#name", "bob")
    bob.dispatch_event("#name", "change")
    mark = uuid.uuid4().hex[:6]
    say(alice, f"hello bob {mark}")
    wait_log(bob, f"[alice] hello bob {mark}")
    wait_log(alice, f"[alice] hello bob {mark}")  # everyone gets every line, the sender too
    say(bob, f"hi alice {mark} ☃")
    wait_log(alice, f"[bob] hi alice {mark} ☃")
    assert alice.input_value("#input") == ""


def test_chat_newcomer_gets_the_last_15(open_page: OpenPage) -> None:
    alice = open_page("/chat.html")
    alice.fill("#name", "alice")
    mark = uuid.uuid4().hex[:6]
    lines = [f"{mark} line {i:02d}" for i in range(20)]
    for line in lines:
        say(alice, line)
    wait_log(alice, lines[-1])
    newcomer = open_page("/chat.html")
    newcomer.wait_for_function("() => document.querySelectorAll('#log > div').length >= 15")
    # The replay is all: a line said now is the next one the newcomer shows.
    say(alice, f"{mark} marker")
    wait_log(newcomer, f"{mark} marker")
    assert log_lines(newcomer) == [f"[alice] {line}" for line in lines[-15:]] + [f"[alice] {mark} marker"]


# -- canvas --------------------------------------------------------------------------------------


def strokes(page: Page) -> int:
    return int(page.get_attribute("#board", "data-strokes"))


def canvas_pixels(page: Page) -> dict:
    """How many pixels are painted, and a checksum of the whole bitmap."""
    return page.evaluate("""() => {
        const b = document.getElementById("board");
        const d = b.getContext("2d").getImageData(0, 0, b.width, b.height).data;
        let painted = 0, sum = 0;
        for (let i = 0; i < d.length; i += 4) {
            if (d[i + 3] !== 0) painted++;
            sum = (sum * 31 + d[i] * 7 + d[i + 1] * 11 + d[i + 2] * 13 + d[i + 3]) % 2147483647;
        }
        return {painted, sum};
    }""")


def pixel_alpha(page: Page, fx: float, fy: float) -> int:
    """Alpha of the canvas pixel at the fractions (fx, fy) of its size."""
    return page.evaluate("""([fx, fy]) => {
        const b = document.getElementById("board");
        const x = Math.round(fx * b.width), y = Math.round(fy * b.height);
        return b.getContext("2d").getImageData(x, y, 1, 1).data[3];
    }""", [fx, fy])


def draw(page: Page, points: list[tuple[float, float]]) -> None:
    """Drag the mouse through ``points`` (fractions of the canvas): real pointer events."""
    box = page.locator("#board").bounding_box()
    assert box is not None
    xy = [(box["x"] + fx * box["width"], box["y"] + fy * box["height"]) for fx, fy in points]
    page.mouse.move(*xy[0])
    page.mouse.down()
    for x, y in xy[1:]:
        page.mouse.move(x, y, steps=4)
        page.wait_for_timeout(20)  # a few animation frames: several stroke messages
    page.mouse.up()


def test_canvas_strokes_appear_in_the_other_browser(open_page: OpenPage) -> None:
    painter = open_page("/canvas.html")
    viewer = open_page("/canvas.html")
    before = strokes(viewer)
    assert strokes(painter) == before  # both replayed the same history
    draw(painter, [(0.1, 0.2), (0.3, 0.25), (0.5, 0.5), (0.7, 0.6), (0.9, 0.8)])
    # The painter draws its own strokes when they come back from the endpoint.
    painter.wait_for_function("(n) => +document.getElementById('board').dataset.strokes > n", arg=before)
    painter.wait_for_timeout(300)  # the last frame's stroke is sent too
    drawn = strokes(painter)
    viewer.wait_for_function("(n) => +document.getElementById('board').dataset.strokes === n", arg=drawn)
    assert drawn - before >= 2, "the drag was sent as several strokes"
    mine, theirs = canvas_pixels(painter), canvas_pixels(viewer)
    assert mine["painted"] > 1000
    assert theirs == mine  # the same pixels, the same colour
    assert pixel_alpha(viewer, 0.5, 0.5) > 0  # on the drawn path
    assert pixel_alpha(viewer, 0.9, 0.1) == 0  # far from it

    # A newcomer gets the strokes from the endpoint's history.
    newcomer = open_page("/canvas.html")
    newcomer.wait_for_function("(n) => +document.getElementById('board').dataset.strokes === n", arg=drawn)
    assert canvas_pixels(newcomer) == mine


def hue(page: Page) -> float:
    colour = page.get_attribute("#board", "data-colour")
    match = re.fullmatch(r"hsl\((\d+), 75%, 45%\)", colour or "")
    assert match, colour
    return float(match.group(1))


def hue_distance(a: float, b: float) -> float:
    d = abs(a - b) % 360
    return min(d, 360 - d)


def well_apart(page: Page, must_avoid: list[float]) -> None:
    """Until the page's colour is as far from every hue it has seen on the canvas as a
    max-min choice guarantees (some gap between n hues is at least 360/n wide; its
    middle, within the candidates' spacing, is the pick), ``must_avoid`` among them."""
    try:
        page.wait_for_function("""(avoid) => {
            const seen = usedHues;
            if (!avoid.every((h) => seen.includes(h))) return false;
            const m = /^hsl\\((\\d+),/.exec(document.getElementById("board").dataset.colour);
            const mine = +m[1], apart = (a, b) => { const d = Math.abs(a - b) % 360; return Math.min(d, 360 - d); };
            return Math.min(...seen.map((h) => apart(h, mine))) >= 180 / seen.length - 6;
        }""", arg=must_avoid, polling=50)
    except PlaywrightTimeout:
        seen = page.evaluate("() => usedHues")
        raise AssertionError(f"colour {hue(page)} is too close to one of {seen}") from None


def test_canvas_colours_are_well_apart(open_page: OpenPage) -> None:
    """Each painter gets a hue far from those already on the canvas; a window that has
    not drawn yet moves away from a colour it sees arrive."""
    first = open_page("/canvas.html")
    waiting = open_page("/canvas.html")  # opened before the first one drew: its colour was a guess
    draw(first, [(0.1, 0.1), (0.2, 0.15), (0.3, 0.2)])
    well_apart(waiting, [hue(first)])
    draw(waiting, [(0.1, 0.5), (0.2, 0.55), (0.3, 0.6)])
    third = open_page("/canvas.html")  # finds both colours in the history
    well_apart(third, [hue(first), hue(waiting)])
    assert min(hue_distance(hue(third), h) for h in (hue(first), hue(waiting))) >= 30


# -- live logs --------------------------------------------------------------------------------------


@pytest.mark.parametrize("via", ["zeromq", "http"])
def test_logs_from_python_logging(open_page: OpenPage, demo: DemoGateway, via: str) -> None:
    from sockway.loghandler import SockwayHandler

    page = open_page("/logs.html")
    assert page.text_content("#status") == "connected over websocket"
    page.wait_for_function("() => client.getSubscription('logs').state === 'subscribed'")
    mark = uuid.uuid4().hex[:8]
    logger = logging.getLogger(f"shop.{mark}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    if via == "zeromq":
        handler = SockwayHandler(demo.pull, channel="logs")
    else:
        handler = SockwayHandler(url=demo.url, key=demo.key, channel="logs")
    logger.addHandler(handler)
    try:
        logger.warning("payment %s declined", mark)
        try:
            raise ValueError(f"card {mark} expired")
        except ValueError:
            logger.exception("charge failed")
    finally:
        logger.removeHandler(handler)
        handler.close()
    wait_log(page, f"WARNING  shop.{mark}: payment {mark} declined")
    wait_log(page, f"ERROR    shop.{mark}: charge failed")
    wait_log(page, f"ValueError: card {mark} expired")  # the traceback is shown too
    level = page.eval_on_selector_all(
        "#log > div", "(ds, m) => ds.find(d => d.textContent.includes('payment ' + m)).className", mark)
    assert level == "level-WARNING"


def test_logs_snippet_on_the_page(open_page: OpenPage, demo: DemoGateway) -> None:
    """The Python program the page shows, run as a user would (its own process)."""
    page = open_page("/logs.html")
    page.wait_for_function("() => client.getSubscription('logs').state === 'subscribed'")
    text = page_commands("logs.html")
    body = text.split("<<'PY'\n", 1)[1].split("\nPY", 1)[0]
    assert "SockwayHandler(\"tcp://127.0.0.1:5557\"" in body
    result = subprocess.run([sys.executable, "-"], input=demo.localize(body), capture_output=True, text=True,
                            timeout=30, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    wait_log(page, "INFO     shop: order 1042 paid")
    wait_log(page, "WARNING  shop: stock low: tea")


def test_logs_from_php(open_page: OpenPage, demo: DemoGateway) -> None:
    php = require_php_zmq()
    page = open_page("/logs.html")
    page.wait_for_function("() => client.getSubscription('logs').state === 'subscribed'")
    mark = uuid.uuid4().hex[:8]
    # The command on the page, with this gateway's PULL address as the third argument.
    assert 'php demos/logs/log.php warning "disk almost full"' in (WWW / "logs.html").read_text()
    result = subprocess.run([php, "demos/logs/log.php", "warning", f"disk almost full {mark}", demo.pull],
                            capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    wait_log(page, f"WARNING  php: disk almost full {mark}")


def test_logs_newcomer_sees_recent_records(open_page: OpenPage, demo: DemoGateway) -> None:
    """The page says the channel keeps the last 50 records for a newcomer."""
    from sockway.app import Client

    mark = uuid.uuid4().hex[:8]
    client = Client(demo.url, demo.key)
    for i in range(3):
        client.publish("logs", {"time": time.time(), "level": "INFO", "logger": "history",
                                "message": f"{mark} before {i}"})
    page = open_page("/logs.html")
    wait_log(page, f"{mark} before 2")
    lines = [line for line in log_lines(page) if mark in line]
    assert [line.split(": ", 1)[1] for line in lines] == [f"{mark} before {i}" for i in range(3)]
    # Then the live ones, after them.
    client.publish("logs", {"time": time.time(), "level": "INFO", "logger": "history", "message": f"{mark} live"})
    wait_log(page, f"{mark} live")
    assert mark + " live" in log_lines(page)[-1]


# -- the TCP tunnel ---------------------------------------------------------------------------------


def test_tunnel_both_ways(open_page: OpenPage, demo: DemoGateway) -> None:
    page = open_page("/tunnel.html")
    assert page.text_content("#status") == "connected over websocket"
    page.wait_for_function("() => client.getSubscription('tunnel').state === 'subscribed'")
    tcp = LineClient(demo.tunnel_port)
    try:
        assert tcp.line() == "* connected to channel 'tunnel'; type a line and press enter"
        mark = uuid.uuid4().hex[:6]
        tcp.send_line(f"hello from nc {mark}")
        wait_log(page, f"[tcp {tcp.local}] hello from nc {mark}")
        # The line comes back to the TCP side too: the channel is the conversation.
        tcp.until(lambda line: line == f"[tcp {tcp.local}] hello from nc {mark}")

        name = page.input_value("#name")
        assert name.startswith("browser")
        say(page, f"hello from the browser {mark} ☃")
        tcp.until(lambda line: line == f"[{name}] hello from the browser {mark} ☃")
        wait_log(page, f"[{name}] hello from the browser {mark} ☃")
    finally:
        tcp.close()


def test_tunnel_page_command(open_page: OpenPage, demo: DemoGateway) -> None:
    """The page shows the tunnel's real address (this gateway's is not make demo's 7070),
    and the command it shows works as it is: nc talks to the browser."""
    assert "nc 127.0.0.1 7070" in page_commands("tunnel.html")  # as written, for make demo
    page = open_page("/tunnel.html")
    shown = shown_commands(page)
    assert shown == f"nc 127.0.0.1 {demo.tunnel_port}        # or: telnet 127.0.0.1 {demo.tunnel_port}"
    page.wait_for_function("() => client.getSubscription('tunnel').state === 'subscribed'")
    nc = require_program("nc", "apt-get install netcat-openbsd")
    command = shown.split("#")[0].strip().replace("nc ", nc + " ", 1)
    proc = subprocess.Popen(["bash", "-c", command], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "* connected to channel 'tunnel'; type a line and press enter\n"
        mark = uuid.uuid4().hex[:6]
        proc.stdin.write(f"hello from nc {mark}\n")
        proc.stdin.flush()
        wait_log(page, f"] hello from nc {mark}")
    finally:
        proc.kill()
        proc.wait(5)


# -- broadcast -------------------------------------------------------------------------------------


def test_broadcast_page_commands(open_page: OpenPage, demo: DemoGateway) -> None:
    """Every command the page shows (curl, Python through ZeroMQ, PHP, sockway publish),
    as the page shows them (with this gateway's addresses), run from a shell."""
    page = open_page("/broadcast.html")
    commands = shown_command_list(page)
    starts = {"curl": "curl ", "python": ".venv/bin/python - <<'PY'", "php": "php ",
              "sockway": ".venv/bin/sockway publish"}
    by_kind = {kind: [c for c in commands if c.startswith(start)] for kind, start in starts.items()}
    assert all(len(found) == 1 for found in by_kind.values()), commands
    assert len(commands) == 4, commands
    expected = {"curl": "hello from curl", "python": "hello from Python",
                "sockway": "hello from sockway publish", "php": "hello from PHP"}
    for kind, (command,) in by_kind.items():
        assert expected[kind] in command
        if kind == "php":
            require_php_zmq()
            assert f"publish.php --to={demo.pull} " in command  # the page gives it this gateway's address
        result = run_shell(demo.localize(command))
        if kind in ("curl", "sockway"):
            assert '"endpoint": "/broadcast"' in result.stdout.replace('":"', '": "')
        wait_log(page, expected[kind])


def test_broadcast_reaches_every_browser(open_page: OpenPage, demo: DemoGateway) -> None:
    pages = [open_page("/broadcast.html") for _ in range(3)]
    mark = f"to all {uuid.uuid4().hex[:6]}"
    run_shell(demo.localize(f".venv/bin/sockway publish --endpoint /broadcast '{mark}' "
                            "--url http://127.0.0.1:8080 --key demo"))
    for page in pages:
        wait_log(page, mark)


# -- echo and the index ---------------------------------------------------------------------------


ECHO_PICKER = ["", "websocket", "xhr-streaming", "eventsource", "iframe-eventsource", "htmlfile",
               "iframe-htmlfile", "xhr-polling", "iframe-xhr-polling", "jsonp-polling"]


def test_echo_picker_lists_every_transport() -> None:
    """Every transport sockjs-client 1.6.1 offers a page of the gateway's own origin (the
    xdr-* ones are Internet Explorer's)."""
    source = (WWW / "echo.html").read_text()
    options = re.findall(r'<option(?: value="([^"]*)")?>([^<]*)</option>', source)
    assert [value if value or text.startswith("automatic") else text for value, text in options] == ECHO_PICKER


@pytest.mark.parametrize("transport", ECHO_PICKER)
def test_echo_page_picker(open_page: OpenPage, demo: DemoGateway, transport: str) -> None:
    """Choosing a transport in the page's picker reconnects over it (and only it)."""
    page = open_page("/echo.html")
    assert page.text_content("#status").startswith("connected over ")  # what SockJS picks (websocket, unless slow)
    assert page.input_value("#transport") == ""
    if transport:
        with page.expect_navigation():
            page.select_option("#transport", transport)
        assert page.url == f"{demo.url}/echo.html?transport={transport}"
        page.wait_for_selector("#status.ok")
        assert page.input_value("#transport") == transport
    assert page.text_content("#status") == f"connected over {transport or 'websocket'}"
    say(page, "ping ☃")
    wait_log(page, "< ping ☃")
    assert log_lines(page) == ["> ping ☃", "< ping ☃"]


def test_index_links(open_page: OpenPage, demo: DemoGateway) -> None:
    index = open_page("/", connected=False)
    assert index.title() == "sockway demos"
    hrefs = index.eval_on_selector_all("a.card", "links => links.map(a => a.getAttribute('href'))")
    assert sorted(hrefs) == sorted(["/broadcast.html", "/chat.html", "/canvas.html", "/logs.html",
                                    "/tunnel.html", "/echo.html", "/admin/"])
    for href in hrefs:
        if href == "/admin/":
            continue
        with index.expect_navigation() as navigation:
            index.click(f"a.card[href='{href}']")
        response = navigation.value
        assert response is not None and response.ok, href
        assert index.url == demo.url + href
        assert index.title().endswith("— sockway"), href
        index.wait_for_selector("#status.ok")  # the demo connected
        # The header leads back to the index.
        with index.expect_navigation():
            index.click("header h1 a")
        assert index.url == demo.url + "/"


def test_index_dashboard_card(open_page: OpenPage, demo: DemoGateway) -> None:
    """The index links the dashboard and gives its key; the key it gives opens it."""
    index = open_page("/", connected=False)
    card = index.text_content("a.card[href='/admin/']")
    key = re.search(r"API key: (\S+)\.$", card.strip())
    assert key is not None and key.group(1) == demo.key, card
    with index.expect_navigation():
        index.click("a.card[href='/admin/']")
    assert index.title() == "sockway dashboard"
    index.fill("#key-input", key.group(1))
    index.click("#key-submit")
    index.wait_for_selector("#app", state="visible")
    index.wait_for_function("() => document.getElementById('stat-connections').textContent !== '\\u2013'")


def test_index_tool_commands(demo: DemoGateway) -> None:
    """The tool commands on the index page run against the demo."""
    commands = command_lines(page_commands("index.html"))
    publish = [c for c in commands if " publish " in c]
    assert len(publish) == 1
    run_shell(demo.localize(publish[0].split("#")[0]))
    cat = [c for c in commands if c.startswith(".venv/bin/sockway cat ws://")]
    assert len(cat) == 1
    result = run_shell("echo ping | " + demo.localize(cat[0].split("#")[0]) + " --linger 0.3")
    assert result.stdout == "ping\n"


@pytest.mark.parametrize("path", ["/chat.html", "/canvas.html", "/broadcast.html", "/echo.html", "/logs.html",
                                  "/tunnel.html"])
def test_every_page_takes_a_forced_transport(open_page: OpenPage, path: str) -> None:
    """The index says: add ?transport=... to a demo's URL to force one; every page says
    which transport it is connected over."""
    page = open_page(f"{path}?transport=xhr-polling")
    assert page.text_content("#status") == "connected over xhr-polling"
    if path in ("/logs.html", "/tunnel.html"):  # sockway.js pages
        assert page.evaluate("() => client.transport") == "sockjs/xhr-polling"


# -- the commands the pages show --------------------------------------------------------------


def shown_commands(page: Page) -> str:
    """The pages' commands as the browser shows them, once common.js has put this
    gateway's addresses in."""
    page.wait_for_selector("body[data-commands='localized']")
    return "\n".join(page.eval_on_selector_all("pre.cmd, code.cmd", "els => els.map(e => e.textContent)"))


def shown_command_list(page: Page) -> list[str]:
    """One command per paragraph of the page's blocks, comments dropped (a here-document
    is one command with its lines)."""
    out = []
    for paragraph in re.split(r"\n\s*\n", shown_commands(page)):
        lines = [line for line in paragraph.splitlines() if line.strip() and not line.lstrip().startswith("#")]
        if lines:
            out.append(re.sub(r"\\\n\s*", " ", "\n".join(lines)))
    return out


@pytest.mark.parametrize("path", ["/", "/broadcast.html", "/logs.html", "/tunnel.html"])
def test_pages_show_this_gateways_addresses(open_page: OpenPage, demo: DemoGateway, path: str) -> None:
    """This gateway runs on other ports than make demo's: the commands on its pages say
    the ports it really uses (host and port from the page's own location, ZeroMQ and the
    tunnel from /sockway/site.json), none of make demo's."""
    page = open_page(path, connected=path != "/")
    shown = shown_commands(page)
    for default in ("8080", "5555", "5557", "7070"):
        assert default not in shown, (default, shown)
    expected = {"/": [f"ws://127.0.0.1:{demo.port}/echo/websocket", f"http://127.0.0.1:{demo.port}/chat"],
                "/broadcast.html": [f"http://127.0.0.1:{demo.port}/api/broadcast", demo.pull],
                "/logs.html": [f'SockwayHandler("{demo.pull}"',
                               f'php demos/logs/log.php warning "disk almost full" {demo.pull}'],
                "/tunnel.html": [f"nc 127.0.0.1 {demo.tunnel_port}"]}[path]
    for text in expected:
        assert text in shown, (text, shown)
