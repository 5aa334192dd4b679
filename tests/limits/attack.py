"""Hostile clients for the tests of the gateway's limits: many sockets from chosen
source addresses (127.0.0.2 and up, so that a normal client on 127.0.0.1 is another
address), and a look at the gateway's descriptors."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import socket
import time
import urllib.request

import pytest

from support import IN_CI


def open_descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def limit_descriptors(limit: int):
    """A preexec_fn: the gateway's RLIMIT_NOFILE, soft and hard."""

    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    return apply


@contextlib.contextmanager
def descriptors_for_the_test(needed: int):
    """Raise this process's soft descriptor limit to what the attack needs."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed:
        message = f"this test opens {needed} sockets; the hard descriptor limit is {hard}"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, needed), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def connect_from(address: str, port: int, timeout: float = 5.0) -> socket.socket:
    sock = socket.socket()
    sock.settimeout(timeout)
    sock.bind((address, 0))
    sock.connect(("127.0.0.1", port))
    return sock


def closed_by_peer(sock: socket.socket, timeout: float) -> bool:
    """Whether the server ends the connection (EOF or reset) within ``timeout``,
    having sent nothing."""
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def tcp_stats(url: str) -> dict:
    with urllib.request.urlopen(url + "/sockway/health", timeout=5) as response:
        return json.load(response)["tcp"]


def timed_get(url: str, timeout: float) -> tuple[int, float]:
    start = time.monotonic()
    with urllib.request.urlopen(url, timeout=timeout) as response:
        response.read()
        return response.status, time.monotonic() - start


def problems(log: str) -> list[str]:
    """Lines of a gateway's log that must not be there."""
    return [line for line in log.splitlines()
            if "Traceback" in line or " ERROR " in line or "Too many open files" in line]
