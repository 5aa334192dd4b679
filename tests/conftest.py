"""Fixtures shared by every test module, the demo tests' grouping, and ``--groups``: the
progress of a long run told per test directory."""

from __future__ import annotations

import time

import pytest

from support import GatewayProcess, gateway


@pytest.fixture(scope="session")
def testserver() -> GatewayProcess:
    """One ``sockway testserver`` for the session (the SockJS protocol test server)."""
    with gateway(["testserver"]) as proc:
        yield proc


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The demo tests run on free ports like every other test; they are kept in one
    worker under pytest-xdist (``--dist loadgroup``) because each of their modules shares
    one gateway and one Chromium, which a module split over two workers would start twice."""
    for item in items:
        if "demos" in item.path.parts:
            item.add_marker(pytest.mark.xdist_group("demos"))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node, ids: list[str]) -> None:
    """Under ``--dist loadgroup``, say it loudly when the groups were lost: pytest-xdist
    (3.8) groups by a suffix it writes into each grouped test's node id, which pytest 9.2's
    structured node ids ignore, so the groups silently fall apart (each module's gateway
    and Chromium are then started in both workers: slower, still correct)."""
    config = node.config
    if config.getvalue("dist") != "loadgroup" or getattr(config, "_sockway_groups_checked", False):
        return
    config._sockway_groups_checked = True
    lost = [nodeid for nodeid in ids if nodeid.startswith("tests/demos/") and "@" not in nodeid]
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if lost and reporter is not None:
        reporter.write_line(f"warning: --dist loadgroup does not group with pytest {pytest.__version__} and this "
                            f"pytest-xdist ({lost[0]} has no group): install the versions pyproject.toml asks for",
                            yellow=True, bold=True)


# -- --groups: one line per test directory ----------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--groups", action="store_true",
                     help="report progress per test directory (a line when it starts, one with its counts and "
                          "time when it ends) instead of a dot per passing test")


def pytest_configure(config: pytest.Config) -> None:
    # Under pytest-xdist the workers' reports reach the controller, which prints.
    if config.getoption("groups") and not hasattr(config, "workerinput"):
        config.pluginmanager.register(GroupProgress(config), "sockway-group-progress")


def group_of(nodeid: str) -> str:
    """``tests/unit/test_x.py::test_y`` -> ``tests/unit``; files directly in tests/ are
    one group, ``tests/*.py``."""
    parts = nodeid.split("::", 1)[0].split("/")
    return "/".join(parts[:2]) if len(parts) > 2 else "/".join([*parts[:-1], "*.py"])


class GroupProgress:
    """Prints ``tests/unit: 212 tests…`` when a directory's first test starts and
    ``tests/unit: 212 passed in 14.1 s  [964 of 1006, 2:31]`` when its last one ends; a
    test prints nothing else, unless it fails: then its name, at once."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.totals: dict[str, int] | None = None
        self.started: dict[str, float] = {}
        self.done: dict[str, int] = {}
        self.outcomes: dict[str, dict[str, int]] = {}
        self.finished = 0
        self.start = time.monotonic()

    def _count(self, nodeids: list[str]) -> None:
        if self.totals is None:  # every xdist worker collects the same tests
            self.totals = {}
            for nodeid in nodeids:
                self.totals[group_of(nodeid)] = self.totals.get(group_of(nodeid), 0) + 1

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        if not hasattr(self.config, "workerinput") and session.items:
            self._count([item.nodeid for item in session.items])

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node, ids: list[str]) -> None:
        self._count(ids)

    def _line(self, text: str) -> None:
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(text)

    def pytest_report_teststatus(self, report: pytest.TestReport, config: pytest.Config):
        """No letter per test: the group's line counts them, and names the failures."""
        if hasattr(report, "wasxfail"):
            return None
        if report.when == "call":
            return report.outcome, "", report.outcome.upper()
        if report.when == "setup" and report.skipped:
            return "skipped", "", "SKIPPED"
        if report.failed:
            return "error", "", "ERROR"
        return None

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        group = group_of(report.nodeid)
        total = (self.totals or {}).get(group, 0)
        if group not in self.started:
            self.started[group] = time.monotonic()
            self._line(f"{group}: {total} test{'s' if total != 1 else ''}…")
        outcomes = self.outcomes.setdefault(group, {})
        if report.when == "call" or (report.when == "setup" and not report.passed):
            outcome = "xfailed" if hasattr(report, "wasxfail") and report.skipped else report.outcome
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
        elif report.when == "teardown" and report.failed:
            outcomes["error"] = outcomes.get("error", 0) + 1
        if report.failed:  # named at once: the details come in the summary at the end
            self._line(f"{'FAILED' if report.when == 'call' else 'ERROR'} {report.nodeid} ({report.when})")
        if report.when != "teardown":
            return
        self.done[group] = self.done.get(group, 0) + 1
        self.finished += 1
        if self.done[group] == total:
            seconds = time.monotonic() - self.started[group]
            counts = ", ".join(f"{n} {name}" for name, n in sorted(outcomes.items(), key=lambda kv: -kv[1]))
            elapsed = int(time.monotonic() - self.start)
            everything = sum((self.totals or {}).values())
            self._line(f"{group}: {counts} in {seconds:.1f} s  "
                       f"[{self.finished} of {everything}, {elapsed // 60}:{elapsed % 60:02d}]")
