"""Property-based testing of the HTTP API against its own OpenAPI description
(/api/openapi.json) with schemathesis: for every operation, generated requests (valid
and invalid ones) never get a 5xx, and every response conforms to the description
(status code documented, content type, body schema). Bounded: a few dozen examples
per operation."""

from __future__ import annotations

import pytest
import requests

schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis import checks as st_checks  # noqa: E402
from schemathesis.generation.modes import GenerationMode  # noqa: E402

from realtime import KEY  # noqa: E402
from support import assert_clean_log, config_gateway, log_mark  # noqa: E402

CONFIG = f"""
[server]
sweep_interval = 0.2
shutdown_timeout = 1

[api]
key = "{KEY}"

[[endpoint]]
prefix = "/ch"
mode = "channels"

[[endpoint]]
prefix = "/bc"
mode = "broadcast"

[[namespace]]
name = ""
history_size = 10
presence = true

[[namespace]]
name = "off"
"""


@pytest.fixture(scope="module")
def gateway():
    with config_gateway(CONFIG) as proc:
        yield proc


CHECKS = [
    st_checks.not_a_server_error,
    st_checks.status_code_conformance,
    st_checks.content_type_conformance,
    st_checks.response_schema_conformance,
]
EXAMPLES = 20


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_api_conforms(gateway, mode):
    """Every operation of the description, EXAMPLES generated requests each.

    (schemathesis' pytest plugin, ``from_fixture``, does not run under pytest 9: it
    reads ``request.node._nodeid``; the operations are driven here with hypothesis.)
    Then this gateway, the one the requests went to, is alive and its log clean."""
    mark = log_mark(gateway)
    schema = schemathesis.openapi.from_url(gateway.url + "/api/openapi.json")
    session = requests.Session()
    failures: dict[str, str] = {}
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=EXAMPLES, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def check(case):
            case.call_and_validate(session=session, headers={"Authorization": f"Bearer {KEY}"},
                                   checks=CHECKS)

        try:
            check()
        except Exception as exc:  # collect them all, report together
            failures[operation.label] = str(exc)[:3000]
        assert gateway.proc.poll() is None, gateway.output()[-3000:]
    assert operations >= 12
    assert not failures, "\n\n".join(f"{label}:\n{text}" for label, text in failures.items())
    assert_clean_log(gateway, mark)
