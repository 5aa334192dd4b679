"""One place that picks the JSON codec.

orjson is used when installed (it is a declared dependency, but the pure-Python path
stays correct): it is several times faster than the standard library for the small
documents a gateway moves. Both paths produce the same bytes for valid input.
"""

from __future__ import annotations

import json
from typing import Any

try:  # pragma: no cover - exercised by whichever path is installed
    import orjson as _orjson
except ImportError:  # pragma: no cover
    _orjson = None

__all__ = ["HAVE_ORJSON", "dumps", "dumps_str", "loads"]

HAVE_ORJSON = _orjson is not None


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


def dumps(obj: Any) -> bytes:
    """Serialize to compact UTF-8 JSON bytes (non-ASCII left as is)."""
    if _orjson is not None:
        try:
            return _orjson.dumps(obj)
        except TypeError:
            pass  # lone surrogates or types orjson refuses: use the slow path
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode(
        "utf-8", "surrogatepass"
    )


def dumps_str(obj: Any) -> str:
    return dumps(obj).decode("utf-8", "surrogatepass")
