"""One gateway shared by the WebSocket conformance tests, with an endpoint per setting
under test. Tests that stop or starve the server start their own."""

from __future__ import annotations

import pytest

from support import GatewayProcess, config_gateway

CONFIG = """
[server]
sweep_interval = 0.2
shutdown_timeout = 2

[[endpoint]]
prefix = "/echo"
mode = "echo"
max_message_size = 4194304

[[endpoint]]
prefix = "/small"
mode = "echo"
max_message_size = 1024

[[endpoint]]
prefix = "/proto"
mode = "echo"
subprotocols = ["chat.v2", "chat.v1"]

[[endpoint]]
prefix = "/nodeflate"
mode = "echo"
permessage_deflate = false

[[endpoint]]
prefix = "/w11"
mode = "echo"
deflate_window_bits = 11

[[endpoint]]
prefix = "/thr"
mode = "echo"
compress_threshold = 1000

[[endpoint]]
prefix = "/bcast"
mode = "broadcast"

[[endpoint]]
prefix = "/keep"
mode = "echo"
heartbeat_delay = 1
ping_timeout = 1
"""


@pytest.fixture(scope="session")
def wsgw() -> GatewayProcess:
    with config_gateway(CONFIG) as proc:
        yield proc
