"""``sockway cat`` at a terminal, driven through a pseudo-terminal (Python's pty module):
the prompt, lines sent, messages printed as they arrive, readline history (the up arrow,
~/.sockway_history under a temporary HOME), /close CODE REASON, /quit, Ctrl-D, Ctrl-C, and a
close by the server while the prompt waits."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from cli_support import CliGateway, T, api, pty_session, wait_connection

UP = "\x1b[A"
PROMPT = r"> "


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path


def test_prompt_send_receive_and_quit(gw: CliGateway, home: Path) -> None:
    with pty_session("cat", gw.ws + "/echo/websocket", home=home) as term:
        term.expect(r"\* open url='ws://127\.0\.0\.1:\d+/echo/websocket' transport='websocket'")
        term.expect(PROMPT)
        term.line("hello there")
        term.expect(r"< hello there\r\n")
        term.expect(PROMPT)
        # Echoes arrive while readline draws the next prompt: each still gets a line of
        # its own, and one prompt follows.
        for i in range(10):
            term.line(f"line {i}")
            term.expect(rf"< line {i}\r\n> ")
        assert "> <" not in term.text and "> > " not in term.text, repr(term.text)
        term.line("/quit")
        assert term.wait() == 0
        term.expect(r"\* close code=1000 reason='' by='client'")


def test_messages_arriving_at_the_prompt(gw: CliGateway, home: Path) -> None:
    """A message from elsewhere is printed above the prompt, and what was being typed
    stays on the new prompt line."""
    mark = f"news-{uuid.uuid4().hex[:8]}"
    with pty_session("cat", gw.url + "/quiet", "--transport", "xhr-streaming", home=home) as term:
        term.expect(r"transport='xhr-streaming'")
        term.expect(PROMPT)
        wait_connection(gw, "/quiet")
        term.send("half typed")
        term.expect("half typed")
        api(gw, "broadcast", endpoint="/quiet", data=mark)
        term.expect(rf"\r\x1b\[K< {mark}\r\n> half typed")
        term.send("\r")  # the line typed before the message arrived is sent whole
        term.expect(r"< half typed\r\n")
        term.line("/quit")
        assert term.wait() == 0


def test_history_up_arrow_and_history_file(gw: CliGateway, home: Path) -> None:
    with pty_session("cat", gw.ws + "/echo/websocket", home=home) as term:
        term.expect(PROMPT)
        term.line("first line")
        term.expect(r"< first line\r\n")
        term.expect(PROMPT)
        term.line("second line")
        term.expect(r"< second line\r\n")
        term.expect(PROMPT)
        term.send(UP + UP + "\r")  # back to "first line" (readline redraws only what changes)
        term.expect(r"< first line\r\n")
        term.line("/quit")
        assert term.wait() == 0
    history = (home / ".sockway_history").read_text().splitlines()
    assert history[-4:] == ["first line", "second line", "first line", "/quit"]

    # A new session starts with that history.
    with pty_session("cat", gw.ws + "/echo/websocket", home=home) as term:
        term.expect(PROMPT)
        term.send(UP + UP + "\r")  # the last line before /quit
        term.expect(r"< first line\r\n")
        term.line("/quit")
        assert term.wait() == 0


def test_close_with_code_and_reason(gw: CliGateway, home: Path) -> None:
    """/close 4000 bye: the server answers the close with the same code; we closed, so
    the status is 0."""
    with pty_session("cat", gw.ws + "/echo/websocket", home=home) as term:
        term.expect(PROMPT)
        term.line("/close 4000 bye bye")
        term.expect(r"\* close code=4000 reason='bye bye'")
        assert term.wait() == 0
        assert "closed by the server" not in term.text


def test_close_over_sockjs(gw: CliGateway, home: Path) -> None:
    with pty_session("cat", gw.url + "/echo", "-t", "xhr-polling", home=home) as term:
        term.expect(PROMPT)
        term.line("polled")
        term.expect(r"< polled\r\n")
        term.line("/close")
        term.expect(r"\* close code=1000 reason=''")
        assert term.wait() == 0


def test_unknown_command_and_bad_close(gw: CliGateway, home: Path) -> None:
    with pty_session("cat", gw.ws + "/echo/websocket", home=home) as term:
        term.expect(PROMPT)
        term.line("/frobnicate")
        term.expect(r"commands: /close \[code\] \[reason\], /quit")
        term.line("/close soon")
        term.expect(r"usage: /close \[code\] \[reason\]")
        term.line("still connected")
        term.expect(r"< still connected\r\n")
        term.line("/q")
        assert term.wait() == 0


def test_ctrl_d(gw: CliGateway, home: Path) -> None:
    with pty_session("cat", gw.ws + "/echo/websocket", home=home) as term:
        term.expect(PROMPT)
        term.send("\x04")
        assert term.wait() == 0
        term.expect(r"\r\n\* close code=1000 reason='' by='client'")


def test_ctrl_c(gw: CliGateway, home: Path) -> None:
    with pty_session("cat", gw.ws + "/echo/websocket", home=home) as term:
        term.expect(PROMPT)
        term.send("half a line")
        term.expect("half a line")
        term.send("\x03")
        assert term.wait() == 0
        term.expect(r"\* close code=1000 reason='' by='client'")
        assert "Traceback" not in term.text


def test_server_closes_while_the_prompt_waits(gw: CliGateway, home: Path) -> None:
    """The application closes the connection with 4000: cat exits 3 at once, without
    waiting for a line to be typed, and leaves no prompt behind."""
    with pty_session("cat", gw.ws + "/app/websocket", home=home) as term:
        term.expect(PROMPT)
        conn = wait_connection(gw, "/app")["conn"]
        api(gw, "close", conn=conn, code=4000, reason="go away")
        assert term.wait(T) == 3
        term.expect(r"\* close code=4000 reason='go away'")
        term.expect(r"sockway cat: closed by the server: 4000 go away\r\n")
        assert not term.text.rstrip("\r\n\x1b[K").endswith(">"), repr(term.text)


def test_jsonl_at_a_terminal_has_no_prompt(gw: CliGateway, home: Path) -> None:
    with pty_session("cat", gw.ws + "/echo/websocket", "--jsonl", home=home) as term:
        term.expect(r'"dir": "open"')
        term.line("x")
        term.expect(r'"dir": "in", "data": "x"')
        term.send("\x04")
        assert term.wait() == 0
        assert "> " not in term.text
