"""The gateway of examples/sockway.toml, one per test module."""

from __future__ import annotations

import pytest
from example_support import ExamplesGateway, examples_gateway


@pytest.fixture(scope="module")
def gw() -> ExamplesGateway:
    with examples_gateway() as running:
        yield running
