"""Fixtures of the demo tests: the gateway of demos/sockway.toml on free ports, and
headless Chromium (Debian's, driven by Playwright) with a factory of pages, each in a
browser context of its own (its own storage: another person at another browser)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from demo_support import WAIT_MS, DemoGateway, demo_gateway
from playwright.sync_api import Browser, Page

from support import ROOT, chromium_browser, require_file

SOCKJS_CLIENT = ROOT / "node_modules" / "sockjs-client" / "dist" / "sockjs.min.js"


@pytest.fixture(scope="module")
def demo() -> Iterator[DemoGateway]:
    require_file(SOCKJS_CLIENT, " (the demo pages load it): npm install")
    with demo_gateway() as running:
        yield running


@pytest.fixture(scope="module")
def chromium() -> Iterator[Browser]:
    """Chromium for one test module, no longer (see chromium_browser)."""
    with chromium_browser() as browser:
        yield browser


class Problems:
    """What went wrong in the pages: failed requests, HTTP errors, script errors."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def watch(self, page: Page) -> None:
        # A navigation aborts the requests of the page left (ERR_ABORTED): not a failure.
        page.on("requestfailed", lambda r: self.items.append(f"request failed: {r.url} {r.failure}")
                if "ERR_ABORTED" not in (r.failure or "") else None)
        page.on("response", lambda r: self.items.append(f"HTTP {r.status}: {r.url}") if r.status >= 400 else None)
        page.on("pageerror", lambda e: self.items.append(f"script error: {e}"))


@pytest.fixture
def open_page(chromium: Browser, demo: DemoGateway) -> Iterator[Callable[..., Page]]:
    """``open_page("/chat.html")``: the page in a fresh browser context, once its
    status line says it is connected. No request of any page may fail."""
    contexts = []
    problems = Problems()

    def factory(path: str, connected: bool = True) -> Page:
        context = chromium.new_context()
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(WAIT_MS)
        problems.watch(page)
        response = page.goto(demo.url + path)
        assert response is not None and response.ok, f"{path}: {response and response.status}"
        if connected:
            page.wait_for_selector("#status.ok")
        return page

    yield factory
    found = list(problems.items)  # before closing: that aborts requests in flight
    for context in contexts:
        context.close()
    assert not found, "\n".join(found)
