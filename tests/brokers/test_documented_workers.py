"""``sockway serve --workers N`` restarts a worker that dies (docs/brokers.md "Several
processes on one machine", docs/observability.md: "A restarted worker gets the same
port back"): the worker that owns a ``--worker-ports`` port is killed by its PID
(SIGKILL, as the kernel's OOM killer would), and that port answers again, from a new
process with a new node id, while the shared port keeps serving and the other worker
is untouched; SIGTERM then stops everything with exit code 0."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time

import pytest
from cluster import http_get, start_node, stop_node

from support import wait_for

pytestmark = pytest.mark.timeout(90)

STARTUP_GRACE = 5.0
"""A worker that dies within this many seconds of its start stops them all (cli.py);
one that dies later is restarted."""


def consecutive_free_ports() -> int:
    """A port P with P and P + 1 both free (bounded search)."""
    for _ in range(50):
        with socket.socket() as first, socket.socket() as second:
            first.bind(("127.0.0.1", 0))
            base = first.getsockname()[1]
            try:
                second.bind(("127.0.0.1", base + 1))
            except OSError:
                continue
        return base
    raise RuntimeError("no two consecutive free ports")


def children(pid: int) -> set[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return {int(p) for p in f.read().split()}


def listener_of(port: int, pids: set[int]) -> int:
    """The process among ``pids`` that has a socket listening on 127.0.0.1:``port``."""
    inodes = set()
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if fields[1] == f"0100007F:{port:04X}" and fields[3] == "0A":  # LISTEN
                inodes.add(fields[9])
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    link = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if link.startswith("socket:[") and link[8:-1] in inodes:
                        return pid
    raise AssertionError(f"none of {pids} listens on {port}")


def age(pid: int) -> float:
    """Seconds since the process started (proc(5): stat field 22, in clock ticks since boot)."""
    with open(f"/proc/{pid}/stat") as f:
        start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
    with open("/proc/uptime") as f:
        uptime = float(f.read().split()[0])
    return uptime - start_ticks / os.sysconf("SC_CLK_TCK")


def node_on(port: int) -> str | None:
    try:
        return http_get(f"http://127.0.0.1:{port}/sockway/health", timeout=1)[1]["node"]
    except OSError:
        return None


def test_a_killed_worker_is_restarted_on_its_port(redis_server):
    base = consecutive_free_ports()
    gw = start_node(redis_server.url, args=("--workers", "2", "--worker-ports", str(base)))
    try:
        ports = (base, base + 1)
        assert wait_for(lambda: all(node_on(p) for p in ports), 15), gw.output()
        nodes = {p: node_on(p) for p in ports}
        workers = children(gw.proc.pid)
        assert len(workers) == 2
        victim = listener_of(base, workers)
        survivor = listener_of(base + 1, workers)
        assert victim != survivor

        time.sleep(max(0.0, STARTUP_GRACE + 0.5 - age(victim)))  # past its start
        os.kill(victim, signal.SIGKILL)
        assert wait_for(lambda: node_on(base) not in (None, nodes[base]), 20), gw.output()[-3000:]

        replacement = listener_of(base, children(gw.proc.pid))
        assert replacement not in (victim, survivor)
        assert children(gw.proc.pid) == {replacement, survivor}
        assert node_on(base + 1) == nodes[base + 1]  # the other worker was not touched
        assert http_get(gw.url + "/readyz")[0] == 200  # the shared port serves throughout
        assert f"worker {victim} exited with -9; restarting it" in gw.output()
    finally:
        stop_node(gw)
    assert gw.proc.returncode == 0, gw.output()[-3000:]
