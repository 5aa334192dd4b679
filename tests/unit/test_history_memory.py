"""What history and kept encodings cost, measured with tracemalloc in this process.

A publication in history is its data's JSON bytes plus the fixed overhead the docs
state (500 bytes: ``history_max_bytes`` in docs/configuration.md), whatever the data's
shape: ``[{},{},...]`` costs 3 bytes per object, not a Python dict each. Encodings that
are kept (history, SockJS session queues, application event queues, presence) cost
their length, not the JSON encoder's working buffer.
"""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sockway.bridge.commands import MAX_DEPTH, CommandError, encode_data
from sockway.bridge.events import encode_json
from sockway.brokers.base import HistoryPolicy
from sockway.brokers.memory import MemoryBroker
from sockway.jsonutil import dumps, loads
from sockway.sockjs.escaping import quote

OVERHEAD = 500
"""Bytes per history entry besides its data, as docs/configuration.md says."""


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


@pytest.mark.parametrize("shape", ["objects", "numbers", "string"])
def test_a_history_entry_costs_its_json_and_the_stated_overhead(shape):
    """300 publications by clients (with their info) of 8 KiB each in one channel, each
    parsed from its command as the gateway does: the memory engine holds their JSON
    bytes and at most the stated overhead per entry."""
    piece = {
        "objects": [{}] * 2700,  # 8 KiB of JSON, 2,700 dicts once parsed
        "numbers": list(range(1600)),
        "string": "x" * 8000,
    }[shape]
    text = dumps(piece)
    length = len(text)
    broker = MemoryBroker()
    policy = HistoryPolicy(size=1000, max_bytes=1 << 30)

    def publish_all() -> None:
        for i in range(300):
            broker.publish("flood", loads(text), policy, {"conn": f"0a1b2c3d.{i:x}", "user": None})

    _, size = allocated(publish_all)
    per_entry = size / 300
    assert per_entry <= length + OVERHEAD, f"{per_entry:.0f} bytes per entry of {length} bytes of JSON"
    assert broker.describe()["history_bytes"] == 300 * (length + OVERHEAD)


def test_the_stated_overhead_is_what_a_small_entry_costs():
    """The overhead counted is close to what an entry costs (not a number picked far
    above it): 3,000 client publications of a few bytes."""
    broker = MemoryBroker()
    policy = HistoryPolicy(size=5000, max_bytes=1 << 30)

    def publish_all() -> None:
        for i in range(3000):
            broker.publish("small", {"n": i}, policy, {"conn": f"0a1b2c3d.{i:x}", "user": "alice"})

    _, size = allocated(publish_all)
    per_entry = size / 3000 - len(dumps({"n": 1000}))
    assert 0.75 * OVERHEAD <= per_entry <= OVERHEAD, per_entry


def _depth(value) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


def _nested(depth: int, leaf) -> object:
    value = leaf
    for level in range(depth):
        value = [value, "]]}"] if level % 2 else {"[": value, "k": '"[{\\'}
    return value


_text = st.text(alphabet='[]{}"\\ab\u2028é', max_size=6)
_values = st.recursive(st.none() | st.integers() | _text,
                       lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=3),
                       max_leaves=40)


@settings(max_examples=300, deadline=None)
@given(value=_values, extra=st.integers(MAX_DEPTH - 3, MAX_DEPTH + 3), wide=st.booleans())
def test_data_nested_deeper_than_the_limit_is_refused(value, extra, wide):
    """Depth is read from the encoded bytes (brackets inside strings do not count);
    a value nested MAX_DEPTH levels deep passes, one level more is refused."""
    data = _nested(extra - _depth(value), value) if _depth(value) < extra else value
    if wide:
        data = [data, [{}] * 50, [[0]] * 50]
    expected = _depth(data)
    if expected > MAX_DEPTH:
        with pytest.raises(CommandError) as refused:
            encode_data(data)
        assert refused.value.code == "bad_request"
    else:
        assert encode_data(data).raw == dumps(data)
