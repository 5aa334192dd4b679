"""Fixtures of the browser tests: one headless Chromium per test module (Debian's,
driven by Playwright), the test page on its own origin, and the gateway under test.

The page is served from http://127.0.0.1:<port A> by a static server of the tests; the
gateway is reached as http://localhost:<port B>. Host and port differ, so every SockJS
request is cross-origin, as on a real site, and the iframe transports really run in an
iframe of the gateway's origin.

``SOCKWAY_BROWSER_TARGET=http://localhost:PORT`` points the tests at an already running
SockJS test server (for example sockjs-node with the same endpoints) instead of starting
``sockway testserver``: a failure that happens there too is in the test, not in sockway
(and a test marked as an expected failure of sockway then reports XPASS).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from browser_harness import BrowserPage, slow_uplink, static_server
from playwright.sync_api import Browser

from support import ROOT, chromium_browser, require_file

SOCKJS_CLIENT = ROOT / "node_modules" / "sockjs-client" / "dist" / "sockjs.min.js"


@pytest.fixture(scope="module")
def chromium() -> Iterator[Browser]:
    """Chromium for one test module, no longer (see chromium_browser)."""
    with chromium_browser() as browser:
        yield browser


@pytest.fixture(scope="session")
def sockjs_client() -> Path:
    return require_file(SOCKJS_CLIENT, ": npm install sockjs-client@1.6.1")


@pytest.fixture(scope="session")
def page_origin(sockjs_client: Path) -> Iterator[str]:
    """Base URL of the test page (http://127.0.0.1:<port>)."""
    with static_server(sockjs_client) as url:
        yield url


@pytest.fixture(scope="session")
def target(request: pytest.FixtureRequest) -> str:
    """Base URL of the SockJS test server, as the browser reaches it (localhost)."""
    external = os.environ.get("SOCKWAY_BROWSER_TARGET")
    if external:
        return external.rstrip("/")
    testserver = request.getfixturevalue("testserver")
    return f"http://localhost:{testserver.port}"


@pytest.fixture(scope="session")
def slow_target(target: str) -> Iterator[str]:
    """The same server behind :func:`browser_harness.slow_uplink` (request bodies arrive in
    4 KiB pieces)."""
    parts = urlsplit(target)
    with slow_uplink(parts.port or 80) as port:
        yield f"http://{parts.hostname}:{port}"


@pytest.fixture
def open_page(chromium: Browser, page_origin: str, target: str) -> Iterator[Callable[[], BrowserPage]]:
    """A factory of test pages, each in a fresh browser context (own cookies and
    storage); all are closed at the end of the test."""
    contexts = []

    def factory() -> BrowserPage:
        context = chromium.new_context()
        contexts.append(context)
        return BrowserPage(context, page_origin, target)

    yield factory
    for context in contexts:
        context.close()


FAILED = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[pytest.TestReport]:
    report = yield
    if report.when == "call" and not report.passed:  # failed, or failed as expected
        item.stash[FAILED] = True
    return report


class SharedPage:
    """One test page reused by consecutive tests while they pass (loading a page costs
    about half a second on a small machine); replaced by a fresh browser context after
    a failure, so one failing test cannot disturb the next."""

    def __init__(self, chromium: Browser, page_origin: str, target: str) -> None:
        self.chromium = chromium
        self.page_origin = page_origin
        self.target = target
        self.current: BrowserPage | None = None

    def get(self) -> BrowserPage:
        if self.current is None:
            self.current = BrowserPage(self.chromium.new_context(), self.page_origin, self.target)
        self.current.recorder.reset()
        return self.current

    def discard(self) -> None:
        if self.current is not None:
            self.current.context.close()
            self.current = None


def _use(shared: SharedPage, request: pytest.FixtureRequest) -> Iterator[BrowserPage]:
    page = shared.get()
    yield page
    if request.node.stash.get(FAILED, False):
        shared.discard()
        return
    try:
        page.call("closeAll")
        settled = page.settle()
    except Exception:
        shared.discard()
        raise
    if not settled:
        shared.discard()


@pytest.fixture(scope="module")
def shared_page(chromium: Browser, page_origin: str, target: str) -> Iterator[SharedPage]:
    shared = SharedPage(chromium, page_origin, target)
    yield shared
    shared.discard()


@pytest.fixture(scope="module")
def shared_slow_page(chromium: Browser, page_origin: str, slow_target: str) -> Iterator[SharedPage]:
    shared = SharedPage(chromium, page_origin, slow_target)
    yield shared
    shared.discard()


@pytest.fixture
def browser_page(shared_page: SharedPage, request: pytest.FixtureRequest) -> Iterator[BrowserPage]:
    """The test page; every connection the test opened is closed after it."""
    yield from _use(shared_page, request)


@pytest.fixture
def slow_uplink_page(shared_slow_page: SharedPage, request: pytest.FixtureRequest) -> Iterator[BrowserPage]:
    """A test page reaching the gateway through :func:`browser_harness.slow_uplink`."""
    yield from _use(shared_slow_page, request)
