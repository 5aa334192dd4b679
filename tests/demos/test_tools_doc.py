"""docs/tools.md says its commands run as they are against ``make demo``: run every one of
its shell blocks against demos/sockway.toml (on free ports, started with the settings the
page asks for), and check each command's exit status. Commands that would run forever
get a short --timeout; a line marked ``exit 1`` must fail so."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from demo_support import DemoGateway, command_lines, demo_gateway

from support import ROOT, free_port

DOC = ROOT / "docs" / "tools.md"
DOC_PUSH = "tcp://127.0.0.1:5556"
DOC_SECRET = "change-me-to-32-random-characters-or-more"


@pytest.fixture(scope="module")
def doc_demo() -> Iterator[tuple[DemoGateway, str]]:
    """The demo with the two settings the page starts it with: a PUSH socket for events
    and a JWT secret."""
    push = f"tcp://127.0.0.1:{free_port()}"
    with demo_gateway({"SOCKWAY_ZEROMQ_PUSH": push, "SOCKWAY_AUTH_JWT_SECRET": DOC_SECRET}) as running:
        yield running, push


def shell_blocks() -> list[str]:
    return re.findall(r"```sh\n(.*?)```", DOC.read_text(), re.S)


def runnable(line: str) -> tuple[str, int] | None:
    """The command as the test runs it and the status it must end with; None to skip."""
    if "tail -f" in line:
        return None  # follows a file forever; publishing stdin lines runs in the same block
    command, _, comment = line.partition("  #")
    expected = 1 if "exit 1" in comment else 0
    if "--conn 6cce2d16.3" in command:
        expected = 1  # an example connection id: no such connection here
    if re.search(r"\bsockway tail\b", command) and "--timeout" not in command:
        command += " --timeout 1"  # it would wait for more
    return re.sub(r"--timeout \d{2,}", "--timeout 1", command), expected


@pytest.mark.parametrize("index", range(len(shell_blocks())))
def test_doc_block(doc_demo: tuple[DemoGateway, str], index: int, tmp_path: Path) -> None:
    demo, push = doc_demo
    lines = command_lines(shell_blocks()[index])
    script, expectations = [], []
    for i, line in enumerate(lines):
        found = runnable(line)
        if found is None:
            continue
        command, expected = found
        command = demo.localize(command).replace(DOC_PUSH, push)
        script.append(f"{command}\nprintf '\\n::status %d %d\\n' {i} $?")
        expectations.append((i, expected))
    if not script:
        pytest.skip("nothing to run in this block")
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
    result = subprocess.run(["bash", "-c", "\n".join(script)], cwd=tmp_path, env=env, stdin=subprocess.DEVNULL,
                            capture_output=True, text=True, timeout=120)
    statuses = {int(m[0]): int(m[1]) for m in re.findall(r"::status (\d+) (\d+)", result.stdout)}
    for i, expected in expectations:
        assert statuses.get(i) == expected, (f"{lines[i]!r} ended with {statuses.get(i)}, not {expected}\n"
                                             f"stdout: {result.stdout}\nstderr: {result.stderr}")
    assert "Traceback" not in result.stderr, result.stderr
