"""sockway's SockJS client cuts streamed responses into frames in linear time, however
the bytes are cut (a server that sends many frames at once must not cost the client
time quadratic in their number), and gets the same frames as a plain split."""

from __future__ import annotations

import asyncio
import functools
import gc
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sockway.client.sockjs import SockJSClient
from sockway.client.streams import Splitter
from sockway.sockjs.frames import htmlfile_prelude, wrap_htmlfile


@settings(max_examples=200, deadline=None, print_blob=True)
@given(
    pieces=st.lists(st.binary(max_size=20).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")), max_size=10),
    delimiter=st.sampled_from([b"\n", b"\r\n\r\n", b"</script>\r\n"]),
    tail=st.binary(max_size=5).map(lambda b: b.replace(b"\n", b"")),
    data=st.data(),
)
def test_splitter_any_cut_gives_the_pieces(pieces, delimiter, tail, data):
    stream = b"".join(piece + delimiter for piece in pieces) + tail
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    splitter = Splitter(delimiter)
    got = []
    for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        got += splitter.feed(stream[a:b])
    assert got == pieces
    assert splitter.pending == len(tail)


class FakeResponse:
    """One streamed response: its body in the given chunks."""

    status = 200

    def __init__(self, chunks: list[bytes]) -> None:
        self.content = self
        self._chunks = chunks

    async def iter_any(self):
        for chunk in self._chunks:
            yield chunk

    async def __aenter__(self) -> FakeResponse:
        return self

    async def __aexit__(self, *exc) -> None:
        return None


class FakeHTTP:
    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    def post(self, url: str) -> FakeResponse:
        return FakeResponse(self.chunks)

    get = post


STREAMS = {
    "xhr-streaming": (b"h" * 2048 + b"\n" + b"o\n", lambda frame: frame + b"\n"),
    "eventsource": (b"\r\no\r\n\r\n".replace(b"o", b"data: o"), lambda frame: b"data: " + frame + b"\r\n\r\n"),
    "htmlfile": (htmlfile_prelude("cb") + wrap_htmlfile(b"o"), wrap_htmlfile),
}


PAD = "x" * 64


@functools.cache
def body(transport: str, frames: int) -> bytes:
    head, wrap = STREAMS[transport]
    return (head + b"".join(wrap(b'a["%d %s"]' % (i, PAD.encode())) for i in range(frames))
            + wrap(b'c[3000,"bye"]'))


def read(transport: str, frames: int, chunk_size: int | None = None) -> float:
    """CPU seconds the client takes to read ``frames`` one-message frames (of about 80
    bytes) then a close frame, sent in one chunk (or in chunks of ``chunk_size``): the
    thread's CPU time, which other processes on a busy machine do not inflate."""
    whole = body(transport, frames)
    chunks = [whole] if chunk_size is None else [whole[i:i + chunk_size] for i in range(0, len(whole), chunk_size)]

    async def main() -> float:
        client = SockJSClient("http://127.0.0.1:1/echo", transport=transport)
        client.http = FakeHTTP(chunks)
        reader = {"xhr-streaming": client._read_xhr_streaming, "eventsource": client._read_eventsource,
                  "htmlfile": client._read_htmlfile}[transport]
        gc.collect()
        gc.disable()  # a collection landing in one run but not another is not the parser's cost
        try:
            start = time.thread_time()
            await reader()
            elapsed = time.thread_time() - start
        finally:
            gc.enable()
        assert client.close_code == 3000
        assert client.messages.qsize() == frames + 1  # the messages, then the close
        for i in range(frames):
            assert client.messages.get_nowait() == f"{i} {PAD}"
        return elapsed

    return asyncio.run(main())


@pytest.mark.parametrize("transport", list(STREAMS))
def test_frames_cut_anywhere(transport):
    for size in (1, 7, 100):
        read(transport, 50, chunk_size=size)


@pytest.mark.parametrize("transport", list(STREAMS))
def test_reading_is_linear_in_the_number_of_frames(transport):
    """Four times the frames in one chunk take at most eight times as long (best of
    five, so that a busy machine does not decide); cutting each frame off the front
    of the buffer took about sixteen times as long."""
    read(transport, 2_000)  # warm up
    runs = [(read(transport, 2_000), read(transport, 8_000)) for _ in range(5)]
    small, large = min(r[0] for r in runs), min(r[1] for r in runs)
    assert large < 8 * small, f"{small:.3f}s for 2,000 frames, {large:.3f}s for 8,000"
