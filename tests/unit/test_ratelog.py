"""The rate-limited log that complaints about client input go through."""

from __future__ import annotations

import logging

from sockway.ratelog import MAX_KEYS, RateLimitedLog


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_at_most_limit_lines_per_period_and_the_next_line_counts_the_rest(caplog):
    clock = Clock()
    log = RateLimitedLog("sockway.test.ratelog", limit=2, period=10.0, clock=clock)
    with caplog.at_level(logging.WARNING, "sockway.test.ratelog"):
        written = [log.warning("bad", "bad request from %s", f"10.0.0.{i}") for i in range(50)]
        assert written == [True, True] + [False] * 48
        clock.now += 9.9
        assert not log.warning("bad", "bad request from %s", "10.0.0.99")
        clock.now += 0.1
        assert log.warning("bad", "bad request from %s", "10.0.0.100")
    assert [r.getMessage() for r in caplog.records] == [
        "bad request from 10.0.0.0",
        "bad request from 10.0.0.1",
        "bad request from 10.0.0.100 (and 49 more like it left out of the log)",
    ]
    assert all(r.exc_info is None and r.levelno == logging.WARNING for r in caplog.records)


def test_each_key_has_its_own_budget(caplog):
    log = RateLimitedLog("sockway.test.ratelog", limit=1, clock=Clock())
    with caplog.at_level(logging.INFO, "sockway.test.ratelog"):
        assert log.warning("a", "first a")
        assert log.info("b", "first b")
        assert not log.warning("a", "second a")
    assert [r.getMessage() for r in caplog.records] == ["first a", "first b"]


def test_nothing_is_counted_when_the_level_is_off(caplog):
    log = RateLimitedLog("sockway.test.ratelog", limit=1, clock=Clock())
    with caplog.at_level(logging.ERROR, "sockway.test.ratelog"):
        assert not log.warning("a", "hidden")
    with caplog.at_level(logging.WARNING, "sockway.test.ratelog"):
        assert log.warning("a", "shown")
    assert [r.getMessage() for r in caplog.records] == ["shown"]


def test_the_memory_of_keys_is_bounded():
    log = RateLimitedLog("sockway.test.ratelog", limit=1, clock=Clock())
    for i in range(MAX_KEYS * 3):
        log.warning(f"key {i}", "line")
    assert len(log._windows) <= MAX_KEYS
