"""Fixtures shared by every test module."""

from __future__ import annotations

import pytest

from support import GatewayProcess, gateway


@pytest.fixture(scope="session")
def testserver() -> GatewayProcess:
    """One ``sockway testserver`` for the session (the SockJS protocol test server)."""
    with gateway(["testserver"]) as proc:
        yield proc


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The demo tests share one gateway on the demos' fixed ports (8080, 5555, 5557,
    7070: the ports their pages tell users to type): under pytest-xdist
    (``--dist loadgroup``) they all run in one worker."""
    for item in items:
        if "demos" in item.path.parts:
            item.add_marker(pytest.mark.xdist_group("demos"))
