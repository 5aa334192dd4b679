"""Fixtures shared by every test module."""

from __future__ import annotations

import pytest

from support import GatewayProcess, gateway


@pytest.fixture(scope="session")
def testserver() -> GatewayProcess:
    """One ``sockway testserver`` for the session (the SockJS protocol test server)."""
    with gateway(["testserver"]) as proc:
        yield proc
