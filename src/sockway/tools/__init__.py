"""The debugging tools of the command line: ``cat`` (a WebSocket/SockJS shell),
``publish`` and ``tail`` (the bridge from the command line), ``trace`` (live frames)."""

import os
import sys

__all__ = ["broker_target", "positive_int", "positive_seconds", "reader_gone"]


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1 (``--count``)."""
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def positive_seconds(text: str) -> float:
    """An argparse type: a positive number of seconds (``--timeout``)."""
    import argparse
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {text}")
    return value


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


def broker_target(args) -> tuple[str, str, str]:
    """For ``--redis URL`` or ``--nats URL`` (a cluster's ``[broker] url`` as configured):
    the engine ("redis" or "nats"), the URL as given, and its ``prefix`` (default
    "sockway"). A ValueError says what is wrong with the URL."""
    from sockway.brokers.urls import check_broker_url, engine_of, split_options

    engine, url = ("nats", args.nats) if args.nats else ("redis", args.redis)
    try:
        named = engine_of(url)
    except ValueError:
        named = None
    if named != engine:
        raise ValueError(f"--{engine} takes a {engine}:// URL, got {url!r}")
    try:
        check_broker_url(url)
    except ValueError as exc:
        raise ValueError(f"--{engine} {url}: {exc}") from None
    return engine, url, split_options(url)[1]["prefix"]
