"""A newcomer's first hour, on a fresh clone: the README's ``make demo`` (install steps one
line each, nothing else), then every command of the README's tools section and demos
table, as written there (on this demo's ports), each checked for what it must print.

The clone installs its own .venv and node_modules from pip's and npm's caches; the first
``make demo`` takes tens of seconds, the commands a few seconds together."""

from __future__ import annotations

import json
import os
import re
import select
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from newcomer_support import INSTALL_TIMEOUT, FreshDemo, fresh_demo, readme_shell_lines, readme_table_commands
from websockets.sync.client import connect

from support import ROOT, free_port, require_php_zmq, require_program

# One clone and one make demo for the module, whose first test waits for the install.
pytestmark = [pytest.mark.xdist_group("fresh-clone"), pytest.mark.timeout(INSTALL_TIMEOUT + 60)]

T = 20.0  # seconds: the bound of each wait (generous: the machine may be busy)

MAKE_STEPS = [
    "creating .venv (a Python virtual environment)…",
    "installing sockway and its Python packages into .venv (pip)…",
    "installing sockjs-client and the benchmarks' peers into node_modules (npm)…",
]


def quickstart() -> list[str]:
    return [line.split("#")[0].strip() for line in readme_shell_lines("Quickstart")]


def tool(prefix: str) -> str:
    """The README's tools line that starts with ``prefix``."""
    found = [line for line in readme_shell_lines("The tools") if line.startswith(prefix)]
    assert len(found) == 1, (prefix, found)
    return found[0]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FreshDemo]:
    require_program("npm", "apt-get install npm")
    make_demo = quickstart()[0]
    with fresh_demo(tmp_path_factory.mktemp("newcomer"), make_demo) as running:
        yield running


def read_line(stream, timeout: float = T) -> str:
    """One line from a pipe of a running command, within ``timeout``."""
    ready, _, _ = select.select([stream], [], [], timeout)
    assert ready, f"nothing within {timeout} s"
    return stream.readline()


def stop(proc: subprocess.Popen) -> None:
    proc.kill()
    proc.wait(5)


def api(demo: FreshDemo, path: str) -> dict:
    request = urllib.request.Request(demo.url + path, headers={"X-API-Key": "demo"})
    with urllib.request.urlopen(request, timeout=T) as response:
        return json.loads(response.read())["result"]


def test_readme_commands() -> None:
    assert quickstart() == ["make demo", "make test"]
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()
    assert ci[-1] == quickstart()[1]  # CI runs exactly the README's test command


def test_make_demo_says_one_line_per_step(demo: FreshDemo) -> None:
    lines = demo.output.read_text().splitlines()
    serve = f".venv/bin/sockway serve --config demos/sockway.toml --port {demo.port}"
    assert serve in lines, lines
    before = lines[:lines.index(serve)]
    assert before[:3] == MAKE_STEPS, before
    # Then at most the one line about the demos' own prerequisites.
    assert all(line.startswith("note: missing ") and "; install with: " in line for line in before[3:]), before
    assert len(before) <= 4, before
    assert not re.search(r"(?i)deprecat|npm warn|warning:", "\n".join(lines)), lines
    assert f"sockway listening on http://127.0.0.1:{demo.port}" in "\n".join(lines)


def test_cat_websocket(demo: FreshDemo) -> None:
    result = demo.run(tool(".venv/bin/sockway cat ws://"), input="hello ☃\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "hello ☃\n"


def test_cat_sockjs(demo: FreshDemo) -> None:
    mark = f"hi {uuid.uuid4().hex[:6]}"
    result = demo.run(tool(".venv/bin/sockway cat http://"), input=mark + "\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == mark  # the chat's history first, then this line


def test_publish_url(demo: FreshDemo) -> None:
    with connect(f"ws://127.0.0.1:{demo.port}/broadcast/websocket", open_timeout=T) as ws:
        result = demo.run(tool(".venv/bin/sockway publish --endpoint /broadcast \"hello\" --url"))
        assert result.returncode == 0, result.stderr
        answer = json.loads(result.stdout)
        assert answer["endpoint"] == "/broadcast" and set(answer) == {"endpoint", "offset", "epoch"}
        assert ws.recv(T) == "hello"


def test_publish_zmq(demo: FreshDemo) -> None:
    with connect(f"ws://127.0.0.1:{demo.port}/broadcast/websocket", open_timeout=T) as ws:
        result = demo.run(tool(".venv/bin/sockway publish --endpoint /broadcast \"hello\" --zmq"))
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout) == {"sent": {"op": "broadcast", "endpoint": "/broadcast", "data": "hello"},
                                             "to": demo.pull, "socket": "PUSH"}
        assert ws.recv(T) == "hello"


def test_tail_channel(demo: FreshDemo) -> None:
    before = len(api(demo, "/admin/api/channel?name=logs")["subscribers"])
    tail = demo.start(tool(".venv/bin/sockway tail channel logs"))
    try:
        deadline = time.monotonic() + T
        while len(api(demo, "/admin/api/channel?name=logs")["subscribers"]) <= before:
            assert time.monotonic() < deadline, "tail channel never subscribed"
            time.sleep(0.05)
        mark = uuid.uuid4().hex[:8]
        demo.run(f".venv/bin/sockway publish logs {mark} --url http://127.0.0.1:8080 --key demo")
        line = json.loads(read_line(tail.stdout))
        assert (line["type"], line["channel"], line["data"]) == ("message", "logs", mark)
    finally:
        stop(tail)


def test_tail_events(demo: FreshDemo) -> None:
    tail = demo.start(tool(".venv/bin/sockway tail events"))
    try:
        assert read_line(tail.stderr) == (
            f"sockway tail: watching events of http://127.0.0.1:{demo.port}; events come from /live (channels); "
            f"/echo (echo), /chat (broadcast), /broadcast (broadcast), /canvas (broadcast), /tcp/{demo.tunnel_port} "
            "(tunnel) emit none\n")
        with connect(f"ws://127.0.0.1:{demo.port}/live/websocket", open_timeout=T) as ws:
            conn = json.loads(ws.recv(T))["conn"]
            event = json.loads(read_line(tail.stdout))
        assert (event["type"], event["endpoint"], event["conn"]) == ("open", "/live", conn)
    finally:
        stop(tail)


def test_trace(demo: FreshDemo) -> None:
    trace = demo.start(tool(".venv/bin/sockway trace"))
    try:
        assert read_line(trace.stderr).startswith(f"* tracing http://127.0.0.1:{demo.port}")
        mark = uuid.uuid4().hex[:8]
        with connect(f"ws://127.0.0.1:{demo.port}/chat/websocket", open_timeout=T) as ws:
            ws.send(mark)
            deadline = time.monotonic() + T
            while True:
                line = read_line(trace.stdout, max(0.1, deadline - time.monotonic()))
                if f"[ws-text {len(mark)}B] {mark}" in line:
                    break
        assert " < " in line and " /chat websocket " in line, line
    finally:
        stop(trace)


def test_metrics(demo: FreshDemo) -> None:
    result = demo.run(tool("curl -s http://127.0.0.1:8080/metrics"))
    assert result.returncode == 0, result.stderr
    assert re.search(r"^# TYPE sockway_\w+ ", result.stdout, re.M), result.stdout[:500]


# -- the demos table --------------------------------------------------------------------------


def table(program: str) -> list[str]:
    return [c for c in readme_table_commands("The demos") if c.startswith(program + " ")]


def test_demos_table_curl(demo: FreshDemo) -> None:
    (command,) = table("curl")
    with connect(f"ws://127.0.0.1:{demo.port}/broadcast/websocket", open_timeout=T) as ws:
        result = demo.run(command)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["result"]["endpoint"] == "/broadcast"
        assert ws.recv(T) == "hi"


def test_demos_table_php(demo: FreshDemo) -> None:
    require_php_zmq()
    publish, log = table("php")
    with connect(f"ws://127.0.0.1:{demo.port}/broadcast/websocket", open_timeout=T) as ws:
        result = demo.run(publish)
        assert result.returncode == 0, result.stdout + result.stderr
        assert ws.recv(T) == "hi from PHP"
    with connect(f"ws://127.0.0.1:{demo.port}/live/websocket", open_timeout=T) as ws:
        ws.recv(T)
        ws.send(json.dumps({"op": "subscribe", "channel": "logs", "id": 1}))
        while json.loads(ws.recv(T)).get("type") != "reply":
            pass
        result = demo.run(log)
        assert result.returncode == 0, result.stdout + result.stderr
        while (frame := json.loads(ws.recv(T))).get("type") != "message":
            pass
        assert (frame["data"]["level"], frame["data"]["message"]) == ("WARNING", "disk almost full")


def test_demos_table_nc(demo: FreshDemo) -> None:
    require_program("nc", "apt-get install netcat-openbsd")
    (command,) = table("nc")
    nc = demo.start(command)
    try:
        assert read_line(nc.stdout) == "* connected to channel 'tunnel'; type a line and press enter\n"
        mark = uuid.uuid4().hex[:6]
        nc.stdin.write(f"hello {mark}\n")
        nc.stdin.flush()
        assert read_line(nc.stdout).endswith(f"] hello {mark}\n")
    finally:
        stop(nc)


# -- the port-in-use hint, and the prerequisites line -----------------------------------------


def test_port_in_use_says_how_to_move_make_demo() -> None:
    port = free_port()
    with socket.create_server(("127.0.0.1", port)):
        result = subprocess.run([str(Path(sys.executable).parent / "sockway"), "serve", "--port", str(port)],
                                capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == (
        "sockway: the port is in use; choose another with --port 9000 (or SOCKWAY_PORT=9000; "
        "for the demo: make demo PORT=9000)")


def test_demo_prerequisites_line(tmp_path: Path) -> None:
    """Where php, nc and npm are missing, make demo's check says so in one line, with the
    one command that installs them, and does not fail."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for program in ("bash", "grep", "id"):
        (bin_dir / program).symlink_to(require_program(program, "coreutils"))
    result = subprocess.run(["bash", str(ROOT / "scripts" / "system-deps.sh"), "demo"], capture_output=True,
                            text=True, timeout=30, env={"PATH": str(bin_dir)})
    assert result.returncode == 0, result.stderr
    sudo = "" if os.getuid() == 0 else "sudo "
    assert result.stdout == (
        "note: missing php-cli (the Broadcast and Live logs pages' PHP commands), php-zmq (ZeroMQ for those PHP "
        "commands), netcat-openbsd (nc, for the Tunnel page), npm (sockjs-client for the pages; without it they "
        f"load it from a CDN); install with: {sudo}apt-get install php-cli php-zmq netcat-openbsd npm\n")
    assert result.stderr == ""
