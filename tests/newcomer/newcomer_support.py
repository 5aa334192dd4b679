"""What the README tells a newcomer, read from the README itself (so that README and tests
cannot drift apart), and ``make demo`` run in a fresh clone of the repository as the
newcomer runs it."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from support import ROOT, free_port

README = ROOT / "README.md"
DEMO_PORT, DEMO_SUB, DEMO_PULL, DEMO_TUNNEL = 8080, "tcp://127.0.0.1:5555", "tcp://127.0.0.1:5557", 7070
INSTALL_TIMEOUT = 480.0
"""Seconds a first ``make demo`` may take (pip and npm from their caches: tens of seconds)."""


def readme_section(title: str) -> str:
    text = README.read_text()
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert match, f"README.md has no section {title!r}"
    return match.group(1)


def readme_shell_lines(title: str) -> list[str]:
    """The lines of the section's ```sh block, as a newcomer would paste them."""
    block = re.search(r"```sh\n(.*?)```", readme_section(title), re.S)
    assert block, f"README.md's {title!r} has no sh block"
    return [line for line in block.group(1).splitlines() if line.strip()]


def readme_table_commands(title: str) -> list[str]:
    """The commands in the section's table (inline code starting with a program name)."""
    return re.findall(r"`((?:curl|php|nc) [^`]+)`", readme_section(title))


@dataclass
class FreshDemo:
    """``make demo`` running in a fresh clone, on free ports."""

    clone: Path
    port: int
    sub: str
    pull: str
    tunnel_port: int
    output: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def localize(self, command: str) -> str:
        """A README command pointed at this demo's ports (the README's are make demo's
        defaults, which another program on this machine may hold)."""
        command = command.replace(f"127.0.0.1:{DEMO_PORT}", f"127.0.0.1:{self.port}")
        command = command.replace(DEMO_PULL, self.pull).replace(DEMO_SUB, self.sub)
        command = command.replace(f"127.0.0.1 {DEMO_TUNNEL}", f"127.0.0.1 {self.tunnel_port}")
        if self.pull != DEMO_PULL:  # the PHP scripts' built-in address is the default's, as the pages say
            command = command.replace("php examples/php/publish.php ",
                                      f"php examples/php/publish.php --to={self.pull} ")
            command = re.sub(r'(php demos/logs/log\.php \S+ "[^"]*")', rf"\1 {self.pull}", command)
        return command

    def run(self, command: str, timeout: float = 30.0, **kwargs) -> subprocess.CompletedProcess:
        """The command as a newcomer types it in the clone (bash, from the clone's root)."""
        return subprocess.run(["bash", "-c", self.localize(command)], cwd=self.clone, capture_output=True, text=True,
                              timeout=timeout, **kwargs)

    def start(self, command: str) -> subprocess.Popen:
        """A command that runs until stopped (tail, trace, nc), its output in pipes."""
        return subprocess.Popen(["bash", "-c", "exec " + self.localize(command)], cwd=self.clone, text=True,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


# What this run inherits and a newcomer's shell has not: its virtual environment, and
# make's own variables when the suite runs under `make test` (a make started with them
# thinks it is a sub-make and prints "Entering directory" lines).
NOT_A_NEWCOMERS = ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "MAKELEVEL", "MAKEFLAGS", "MFLAGS", "MAKEOVERRIDES",
                   "MAKE_TERMOUT", "MAKE_TERMERR", "PIP_DISABLE_PIP_VERSION_CHECK")


def clean_env() -> dict[str, str]:
    """The environment of a newcomer's shell."""
    env = {k: v for k, v in os.environ.items() if k not in NOT_A_NEWCOMERS}
    bin_dir = str(ROOT / ".venv" / "bin")
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != bin_dir)
    return env


@contextlib.contextmanager
def fresh_demo(directory: Path, make_demo: str) -> Iterator[FreshDemo]:
    """``git clone`` of the repository at HEAD into ``directory``, then ``make_demo`` (the
    README's command) in it with the README's ways to move the ports: ``PORT=`` for HTTP,
    SOCKWAY_ZEROMQ_SUB/PULL for ZeroMQ, the tunnel's ``listen`` in demos/sockway.toml.
    Yields once the gateway answers; stops it (its process group, which this started) at
    the end."""
    clone = directory / "sockway"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True, timeout=120)
    port, sub, pull, tunnel = (free_port() for _ in range(4))
    config = clone / "demos" / "sockway.toml"
    text = config.read_text()
    assert f'listen = "127.0.0.1:{DEMO_TUNNEL}"' in text
    config.write_text(text.replace(f'listen = "127.0.0.1:{DEMO_TUNNEL}"', f'listen = "127.0.0.1:{tunnel}"'))
    env = dict(clean_env(), SOCKWAY_ZEROMQ_SUB=f"tcp://127.0.0.1:{sub}", SOCKWAY_ZEROMQ_PULL=f"tcp://127.0.0.1:{pull}")
    output = directory / "make-demo.log"
    with output.open("w") as log:
        make = subprocess.Popen(["bash", "-c", f"{make_demo} PORT={port}"], cwd=clone, env=env, stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    demo = FreshDemo(clone, port, f"tcp://127.0.0.1:{sub}", f"tcp://127.0.0.1:{pull}", tunnel, output)
    try:
        deadline = time.monotonic() + INSTALL_TIMEOUT
        while True:
            if make.poll() is not None:
                raise AssertionError(f"{make_demo} ended with {make.returncode}:\n{output.read_text()}")
            try:
                with urllib.request.urlopen(demo.url + "/sockway/health", timeout=1) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"{make_demo} did not answer within {INSTALL_TIMEOUT} s:\n{output.read_text()}")
            time.sleep(0.2)
        yield demo
    finally:
        if make.poll() is None:
            os.killpg(make.pid, signal.SIGTERM)  # make and the gateway it runs: the group this started
            try:
                make.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(make.pid, signal.SIGKILL)
                make.wait(5)
