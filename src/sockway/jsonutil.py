"""One place that picks the JSON codec.

orjson is used when installed (it is a declared dependency, but the pure-Python path
stays correct): it is several times faster than the standard library for the small
documents a gateway moves. Both paths produce the same bytes for valid input.

:class:`Json` is a JSON value kept as its encoding: what channel history and the
brokers hold for a publication's data. It is written into a document as it is, with no
parsing and re-encoding (``orjson.Fragment``), and parsed only where the value itself
is needed (:attr:`Json.value`).
"""

from __future__ import annotations

import json
from typing import Any

try:  # pragma: no cover - exercised by whichever path is installed
    import orjson as _orjson
except ImportError:  # pragma: no cover
    _orjson = None

__all__ = ["HAVE_ORJSON", "Json", "binary_text", "dumps", "dumps_str", "exact", "loads"]

HAVE_ORJSON = _orjson is not None


class Json:
    """A JSON value held as its encoding (compact UTF-8, as :func:`dumps` writes it;
    a string with lone surrogates, which SockJS clients can send, is encoded with
    ``surrogatepass``). Memory: the bytes plus about 40 for this object, however
    the value nests; its parsed form would cost tens of bytes per array or object
    (``[{},{}]`` 3 bytes of JSON per object, about 64 bytes of Python each)."""

    __slots__ = ("raw",)

    def __init__(self, raw: bytes) -> None:
        self.raw = raw

    @classmethod
    def encode(cls, value: Any) -> Json:
        return value if isinstance(value, Json) else cls(dumps(value))

    @property
    def value(self) -> Any:
        """The value itself, parsed (a new object at each call)."""
        return _loads_raw(self.raw)

    @property
    def is_string(self) -> bool:
        return self.raw[:1] == b'"'

    @property
    def text(self) -> str:
        """The value as text: a string as it is, anything else as its JSON."""
        if self.is_string:
            return _loads_raw(self.raw)
        return self.raw.decode("utf-8", "surrogatepass")

    def utf8(self) -> bool:
        """Whether the encoding is valid UTF-8 (it is not only when a string holds lone
        surrogates)."""
        if self.raw.isascii():
            return True
        try:
            self.raw.decode("utf-8")
        except UnicodeDecodeError:
            return False
        return True

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Json) and other.raw == self.raw

    def __hash__(self) -> int:
        return hash(self.raw)

    def __repr__(self) -> str:
        return f"Json({self.raw[:40]!r}{'...' if len(self.raw) > 40 else ''})"


def _loads_raw(raw: bytes) -> Any:
    try:
        return loads(raw)
    except (ValueError, UnicodeDecodeError):
        # Lone surrogates, encoded with "surrogatepass" by dumps.
        return loads(raw.decode("utf-8", "surrogatepass"))


def binary_text(data: bytes | bytearray | memoryview) -> str:
    """Binary data (a raw WebSocket client's binary message, a ZeroMQ message that is
    not UTF-8) where a JSON document holds it (the channels protocol's envelope, a
    history answer): its UTF-8 text, each invalid sequence replaced by U+FFFD, as SockJS
    clients receive it too. JSON has no bytes."""
    return bytes(data).decode("utf-8", "replace")


def _fragment(obj: Any) -> Any:
    if isinstance(obj, Json):
        return _orjson.Fragment(obj.raw)  # type: ignore[union-attr]
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return binary_text(obj)
    raise TypeError(f"Type is not JSON serializable: {type(obj).__name__}")


def _parsed(obj: Any) -> Any:
    if isinstance(obj, Json):
        return obj.value
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return binary_text(obj)
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def loads(data: bytes | bytearray | memoryview | str) -> Any:
    """Parse JSON. Falls back to the standard library for what orjson refuses but
    JSON allows, such as lone surrogate escapes (``"\\ud800"``) that browsers send.

    Raises ValueError for anything that is not JSON, including documents nested too
    deeply to parse (which would otherwise surface as RecursionError)."""
    if _orjson is not None:
        try:
            return _orjson.loads(data)
        except _orjson.JSONDecodeError:
            pass
    if isinstance(data, (bytes, bytearray, memoryview)):
        data = bytes(data).decode("utf-8")
    try:
        return json.loads(data)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def exact(encoded: bytes) -> bytes:
    """orjson's result in a bytes object of its exact size. orjson's own holds on to its
    working buffer: about 4 KiB of memory for a document of a few bytes, and a larger
    one keeps address space many times its length; bytes that are kept (history, queues,
    presence) must not."""
    return memoryview(encoded).tobytes()


def dumps(obj: Any) -> bytes:
    """Serialize to compact UTF-8 JSON bytes (non-ASCII left as is), in a bytes object
    of their exact size (see :func:`exact`). :class:`Json` values inside ``obj`` are
    written as they are."""
    if _orjson is not None:
        try:
            return exact(_orjson.dumps(obj, default=_fragment))
        except TypeError:
            pass  # lone surrogates or types orjson refuses: use the slow path
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), default=_parsed).encode(
        "utf-8", "surrogatepass"
    )


def dumps_str(obj: Any) -> str:
    if _orjson is not None:
        try:
            return _orjson.dumps(obj, default=_fragment).decode("utf-8", "surrogatepass")
        except TypeError:
            pass
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), default=_parsed)
