"""Fixtures of the shared-session tests: a broker (Redis or NATS, started by the tests),
two gateway nodes on it and a plain round-robin nginx in front of them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from harness import ENGINES, RoundRobin, round_robin


@pytest.fixture(scope="module", params=ENGINES)
def rr(request) -> Iterator[RoundRobin]:
    """Two nodes sharing sessions through Redis or NATS, behind round-robin nginx."""
    with round_robin(request.param) as cluster:
        yield cluster
