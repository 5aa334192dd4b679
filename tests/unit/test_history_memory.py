"""What kept encodings cost, measured with tracemalloc in this process: encodings
that are kept (SockJS session queues, application event queues, presence) cost their
length, not the JSON encoder's working buffer.
"""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Callable

import pytest

from sockway.bridge.events import encode_json
from sockway.jsonutil import dumps
from sockway.sockjs.escaping import quote


def allocated(make: Callable[[], object]) -> tuple[object, int]:
    """What ``make()`` returns and the bytes still allocated for it afterwards."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = make()
        gc.collect()
        return kept, tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("encode", [
    pytest.param(lambda i: dumps({"n": i}), id="jsonutil.dumps"),
    pytest.param(lambda i: quote(f"hello {i}"), id="sockjs.quote"),
    pytest.param(lambda i: encode_json({"type": "message", "n": i}), id="events.encode_json"),
])
def test_kept_encodings_cost_their_length(encode):
    """orjson's result keeps its working buffer (about 4 KiB for a few bytes): what is
    kept must be a copy of its exact size."""
    encodings, size = allocated(lambda: [encode(i) for i in range(2000)])
    length = sum(len(e) for e in encodings)
    per_object = (size - length) / len(encodings)
    assert per_object < 80, f"{per_object:.0f} bytes per encoding besides its length"
