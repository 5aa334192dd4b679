"""Shared SockJS sessions when things fail (docs/deployment.md "How shared sessions
work"), with two nodes on Redis or NATS, each request sent to the node the test
chooses:

* **The relaying node dies.** A session owned by node A streams through node B (B
  relays A's frames); B is killed. A notices within 10 s without a pull (it asks B
  whether the request is still there, and nobody answers) and closes the session as if
  the client had gone: ``c[1002,"Connection interrupted"]``.
* **B cannot reach the broker** (its broker URL goes through a TCP forwarder the test
  kills; the broker itself and node A are untouched): B is not ready (/readyz 503); a
  send for a session B does not have gets 503, whether B has relayed for it before (its
  owner cannot be reached) or not (sessions cannot be looked up); so does a receiving
  request for a session whose owner B knows, while one for a session B has never seen
  opens a new session there; and on its owner A the session goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import tempfile

import pytest
from cluster import wait_status
from harness import ENGINES, broker_server
from rawsockjs import RawSession
from realtime_run import run

from support import ROOT, GatewayProcess, free_port
from tcp_proxy import tcp_proxy

pytestmark = pytest.mark.timeout(120)

INTERRUPTED = 'c[1002,"Connection interrupted"]'
ANOTHER = 'c[2010,"Another connection still open"]'
PROBE_AFTER = 10.0
"""docs/deployment.md: the owner notices a dead serving node within 10 s without a pull."""
HEARTBEAT = 1.0


def node_config(broker_url: str) -> str:
    return f"""
[server]
sweep_interval = 0.2
shutdown_timeout = 1

[broker]
url = "{broker_url}"

[[endpoint]]
prefix = "/echo"
mode = "echo"
heartbeat_delay = {HEARTBEAT}
disconnect_delay = 5
"""


@contextlib.contextmanager
def node(broker_url: str):
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False, prefix="sockway-node-") as f:
        f.write(node_config(broker_url))
    port = free_port()
    gw = GatewayProcess(["serve", "--config", f.name, "--port", str(port)], port, {"SOCKWAY_NO_UVLOOP": ""}, ROOT)
    try:
        gw.wait_ready()
        wait_status(gw, 200)
        yield gw
    finally:
        gw.stop()
        os.unlink(f.name)


def session_on(gw: GatewayProcess, session_id: str) -> RawSession:
    return RawSession(gw.url + "/echo", session_id)


@pytest.mark.parametrize("engine", ENGINES)
@run(60)
async def test_the_relaying_node_dies(engine):
    with broker_server(engine) as server, node(server.url) as a, node(server.url) as b:
        sid = os.urandom(8).hex()
        at_a, at_b = session_on(a, sid), session_on(b, sid)
        try:
            assert await at_a.open() == ""  # A owns it
            stream = await at_b.receiving("xhr-streaming")  # relayed by B
            assert await stream.frame() == "h"  # A's heartbeat, through B
            assert (await at_a.send("through A"))[0] == 204
            assert await stream.frame() == 'a["through A"]'
            b.proc.send_signal(signal.SIGKILL)
            b.proc.wait(5)
            killed = asyncio.get_running_loop().time()

            # Meanwhile the stream still holds the session on A: a poll there gets 2010,
            # until A finds the stream gone and closes the session.
            while (frame := (await at_a.receive("xhr-polling"))[0]) == ANOTHER:
                assert asyncio.get_running_loop().time() - killed < HEARTBEAT + PROBE_AFTER + 3
                await asyncio.sleep(0.2)
            assert frame == INTERRUPTED
            assert (await at_a.send("anyone?"))[0] == 404
        finally:
            await at_a.close()
            await at_b.close()


@pytest.mark.parametrize("engine", ENGINES)
@run(60)
async def test_a_node_that_cannot_reach_the_broker(engine):
    with broker_server(engine) as server, tcp_proxy(server.port) as proxy:
        cut_url = server.url.replace(f":{server.port}", f":{proxy.port}")
        with node(server.url) as a, node(cut_url) as b:
            relayed, unseen = os.urandom(8).hex(), os.urandom(8).hex()
            sessions = [session_on(a, relayed), session_on(b, relayed), session_on(a, unseen),
                        session_on(b, unseen), session_on(b, os.urandom(8).hex())]
            relayed_a, relayed_b, unseen_a, unseen_b, fresh_b = sessions
            try:
                assert await relayed_a.open() == ""
                assert await unseen_a.open() == ""
                assert (await relayed_b.send("via B"))[0] == 204  # B relays to A (and remembers A)
                assert await relayed_a.receive("xhr-polling") == ('a["via B"]', "")

                proxy.kill()
                await asyncio.to_thread(wait_status, b, 503)

                status, text, _ = await relayed_b.send("via B again")
                assert (status, text) == (503, "The node holding this session cannot be reached; try again.\n")
                async with relayed_b.http.post(relayed_b.url + "/xhr") as response:
                    assert (response.status, await response.text()) == \
                        (503, "The node holding this session cannot be reached; try again.\n")
                status, text, _ = await unseen_b.send("never seen here")
                assert (status, text) == (503, "Sessions cannot be looked up now; try again.\n")
                # A receiving request for a session B never saw: B cannot tell that A has
                # it, and serves it as a new one (a client the balancer keeps on B).
                assert await unseen_b.open() == ""
                assert await fresh_b.open() == ""  # a new session, served by B alone
                assert (await fresh_b.send("local"))[0] == 204
                assert await fresh_b.receive("xhr-polling") == ('a["local"]', "")

                # On its owner, the session goes on.
                assert (await relayed_a.send("via A"))[0] == 204
                assert await relayed_a.receive("xhr-polling") == ('a["via A"]', "")
                assert b.output().count("SockJS sessions: the broker is unavailable") == 1
            finally:
                for session in sessions:
                    await session.close()
