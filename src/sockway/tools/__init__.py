"""The debugging tools of the command line: ``cat`` (a WebSocket/SockJS shell),
``publish`` and ``tail`` (the bridge from the command line), ``trace`` (live frames)."""

import os
import sys

__all__ = ["reader_gone"]


def reader_gone() -> int:
    """What a tool returns when the program reading its output went away (``sockway
    tail ... | head -3``): nothing more to say, status 0, and no second error when the
    interpreter flushes stdout at exit."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    return 0
