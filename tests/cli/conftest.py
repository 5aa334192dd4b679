"""One gateway for the tests of the debugging tools (see cli_support.GATEWAY_TOML)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from cli_support import CliGateway, cli_gateway


@pytest.fixture(scope="session")
def gw() -> Iterator[CliGateway]:
    with cli_gateway() as running:
        yield running


@pytest.fixture(scope="session")
def push_gw() -> Iterator[CliGateway]:
    """The same, with application events going out through a ZeroMQ PUSH socket."""
    with cli_gateway(push=True) as running:
        yield running
