"""``@run(timeout)``: run an async test with asyncio.run, bounded (no pytest plugin)."""

from __future__ import annotations

import asyncio
import functools


def run(timeout: float = 60.0):
    def wrap(fn):
        @functools.wraps(fn)
        def runner(*args, **kwargs):
            async def bounded():
                return await asyncio.wait_for(fn(*args, **kwargs), timeout)

            return asyncio.run(bounded())

        return runner

    return wrap
