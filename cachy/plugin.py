"""pytest plugin: `--cachy` for a whole session, the `cachy` fixture and marker for one test,
replay mode for CI, a summary of what was cached, and pruning after a complete, green run.

Installing cachy registers this plugin in every pytest session, used or not, so it imports cachy's core
(and with it httpx) only once `--cachy`, the ini setting, the fixture or the marker asks for it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from .stats import Stats

MODES = ("record", "replay", "refresh")  # cachy.core.MODES, which would import httpx; a test pins them equal


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("cachy", "caching LLM calls with cachy")
    group.addoption("--cachy", action="store_true", help="cache LLM calls in every test of the session")
    group.addoption("--cachy-mode", choices=MODES, help="record (default), replay or refresh; default: $CACHY_MODE")
    group.addoption("--cachy-dir", help="folder of cachy.jsonl (default: the rootdir)")
    group.addoption(
        "--cachy-max-age", help='record again entries older than this: "30d", "12h"; default: $CACHY_MAX_AGE'
    )
    group.addoption("--cachy-prune", action="store_true", help="after a complete, green session, drop unused entries")
    parser.addini("cachy", type="bool", default=False, help="cache LLM calls in every test of the session")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "cachy(**enable_kwargs): cache LLM calls in this test")
    config.pluginmanager.register(CachySession(config), "cachy-session")


class CachySession:
    """What cachy did in this session (merged from pytest-xdist workers), and whether the run was complete."""

    def __init__(self, config: pytest.Config):
        self.config = config
        self.switch = None
        self.total: Stats | None = None  # None until cachy is used in this session
        self.folder = Path(config.getoption("cachy_dir") or config.rootpath)
        self.deselected = self.skipped = 0
        self.crashed_workers: list[str] = []
        self.pruned: str | None = None

    def enable_kwargs(self, **overrides) -> dict:
        """The session's options as `enable_cachy` arguments, with a marker's arguments on top."""
        options = {"cache_dir": self.folder, "mode": self.config.getoption("cachy_mode")}
        if self.config.getoption("cachy_max_age"):
            options["max_age"] = self.config.getoption("cachy_max_age")
        return {**options, **overrides}

    def add(self, part: Stats) -> None:
        if self.total is None:  # the session's first use of cachy
            self.total = type(part)()
        self.total.add(part)

    def pytest_sessionstart(self) -> None:
        if self.config.getoption("cachy") or self.config.getini("cachy"):
            from .core import cachy

            self.switch = cachy(**self.enable_kwargs())
            self.session_stats = self.switch.__enter__()

    def pytest_deselected(self, items: list) -> None:
        self.deselected += len(items)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.skipped and not hasattr(report, "wasxfail"):  # an xfail test did run
            self.skipped += 1

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node, error) -> None:
        """pytest-xdist: merge what a worker did, so that pruning keeps every worker's entries."""
        output = getattr(node, "workeroutput", {}).get("cachy")
        if error or output is None:
            self.crashed_workers.append(str(getattr(node, "gateway", node).id))
            return
        if output["stats"] is not None:  # None: cachy was not used in that worker
            from .stats import Stats

            self.add(Stats.from_dict(output["stats"]))
        self.deselected += output["deselected"]

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if self.switch is not None:
            self.switch.__exit__(None, None, None)
            self.add(self.session_stats)
        if hasattr(self.config, "workerinput"):  # a worker reports; the controller decides
            stats = None if self.total is None else self.total.to_dict()
            self.config.workeroutput["cachy"] = {"stats": stats, "deselected": self.deselected}
        elif self.config.getoption("cachy_prune"):
            self.pruned = self.prune(exitstatus)

    def _partial_reasons(self, exitstatus: int) -> list[str]:
        """Why this run may not have used every entry that the whole suite needs."""
        reasons = [f"exit status {exitstatus}"] if exitstatus != 0 else []
        reasons += [f"{self.deselected} tests deselected"] if self.deselected else []
        reasons += [f"{self.skipped} tests skipped"] if self.skipped else []
        reasons += [f"pytest-xdist workers {', '.join(self.crashed_workers)} crashed"] if self.crashed_workers else []
        whole = {self.config.rootpath, *(self.config.rootpath / path for path in self.config.getini("testpaths"))}
        if self.config.args_source == pytest.Config.ArgsSource.ARGS:
            narrowed = [arg for arg in self.config.args if Path(arg).resolve() not in whole]
            reasons += [f"only {' '.join(narrowed)} selected"] if narrowed else []
        reasons += ["no cached request was made"] if self.total is None or not self.total.used else []
        return reasons

    def prune(self, exitstatus: int) -> str:
        if reasons := self._partial_reasons(exitstatus):
            return f"not pruned, the run was partial: {'; '.join(reasons)}"
        from .core import compact_cachy

        result = compact_cachy(self.folder / "cachy.jsonl", keep=self.total.used)
        return f"pruned {result.pruned} unused entries, kept {result.kept}"

    def pytest_terminal_summary(self, terminalreporter) -> None:
        used = self.total is not None and bool(self.total.used or self.total.replay_misses)
        if used or self.pruned:
            terminalreporter.write_sep("-", "cachy")
            if used:
                terminalreporter.write_line(f"cachy: {self.total}")
            if self.pruned:
                terminalreporter.write_line(f"cachy: {self.pruned}")


def _scoped(request: pytest.FixtureRequest, **overrides):
    from .core import cachy

    session: CachySession = request.config.pluginmanager.get_plugin("cachy-session")
    with cachy(**session.enable_kwargs(**overrides)) as stats:
        yield stats
    session.add(stats)


@pytest.fixture(name="cachy")
def cachy_fixture(request: pytest.FixtureRequest):
    """Cache LLM calls in this test; yields the test's live `Stats`."""
    yield from _scoped(request)


@pytest.fixture(autouse=True)
def _cachy_marker(request: pytest.FixtureRequest):
    """`@pytest.mark.cachy(**enable_kwargs)`: cache LLM calls in the marked test."""
    marker = request.node.get_closest_marker("cachy")
    if marker is None:
        yield None
    else:
        yield from _scoped(request, **marker.kwargs)
