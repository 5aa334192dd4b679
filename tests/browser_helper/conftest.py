"""Fixtures of the sockway.js tests: headless Chromium (Debian's, driven by Playwright
from its own thread), the test page on its own origin (http://127.0.0.1:<port A>), a
small application receiving webhooks, and one gateway (http://localhost:<port B>) with
channels endpoints and namespaces with and without history."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from helper_driver import (
    API_KEY,
    JWT_SECRET,
    SHORT_HISTORY,
    Api,
    Application,
    HelperPage,
    page_server,
)

from support import ROOT, ChromiumThread, GatewayProcess, config_gateway, require_file, require_program


@pytest.fixture(scope="session")
def helper_chromium() -> Iterator[ChromiumThread]:
    executable = require_program("chromium", "apt-get install chromium")
    chromium = ChromiumThread(executable, "sockway-js-chromium", run_timeout=30.0)
    try:
        yield chromium
    finally:
        chromium.close()


@pytest.fixture(scope="module")
def helper_page_origin() -> Iterator[str]:
    with page_server() as url:
        yield url


@pytest.fixture(scope="module")
def application() -> Iterator[Application]:
    app = Application()
    try:
        yield app
    finally:
        app.close()


@pytest.fixture(scope="module")
def helper_gateway(helper_page_origin: str, application: Application) -> Iterator[GatewayProcess]:
    require_file(ROOT / "node_modules" / "sockjs-client" / "dist" / "sockjs.min.js",
                 ": npm install sockjs-client@1.6.1")
    config = f"""
[server]
allowed_origins = ["{helper_page_origin}"]
sweep_interval = 0.2
shutdown_timeout = 1

[api]
key = "{API_KEY}"

[auth]
jwt_secret = "{JWT_SECRET}"
leeway = 0

[webhook]
url = "{application.url}"
timeout = 2

[[endpoint]]
prefix = "/live"
mode = "channels"

[[endpoint]]
prefix = "/secure"
mode = "channels"
anonymous = false
auth_timeout = 2

[[namespace]]
name = ""
publish = "open"
history_size = 100
presence = true
join_leave = true

[[namespace]]
name = "short"
publish = "open"
history_size = {SHORT_HISTORY}

[[namespace]]
name = "nohist"
publish = "open"

[[namespace]]
name = "closed"
subscribe = "none"
publish = "none"
"""
    with config_gateway(config) as proc:
        yield proc


@pytest.fixture(scope="module")
def api(helper_gateway: GatewayProcess) -> Api:
    return Api(helper_gateway.url)


@pytest.fixture
def open_page(helper_chromium: ChromiumThread, helper_page_origin: str,
              helper_gateway: GatewayProcess) -> Iterator[Callable[..., HelperPage]]:
    """A factory of pages (each in its own browser context), closed after the test.
    The page reaches the gateway as http://localhost:<port>, another origin."""
    pages: list[HelperPage] = []

    def factory(load: str = "classic") -> HelperPage:
        page = HelperPage(helper_chromium, helper_page_origin,
                          f"http://localhost:{helper_gateway.port}", load)
        pages.append(page)
        return page

    yield factory
    for page in pages:
        page.close()
