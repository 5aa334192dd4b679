"""Fixtures of the observability tests: one gateway with the admin API on (an API key,
JWT users, echo and channels endpoints) shared by the tests that only add their own
connections, and headless Chromium in a thread of its own for the dashboard page."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from dashboard_support import CONFIG

from support import ChromiumThread, GatewayProcess, config_gateway, require_program


@pytest.fixture(scope="module")
def gw() -> Iterator[GatewayProcess]:
    with config_gateway(CONFIG) as proc:
        yield proc


@pytest.fixture(scope="module")
def chromium() -> Iterator[ChromiumThread]:
    browser = ChromiumThread(require_program("chromium", "apt-get install chromium"), "dashboard-chromium")
    try:
        yield browser
    finally:
        browser.close()
