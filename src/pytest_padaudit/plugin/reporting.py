"""The pytest side of ``--padaudit-report``: carry audits in test reports, merge, write.

Every test report that follows an audit carries it as JSON primitives (the attribute
:data:`ATTR`), so pytest-xdist brings the workers' audits to the controller; the
controller's :class:`ReportSession` collects them and writes the one merged report.
Workers write nothing. Rendering lives in :mod:`pytest_padaudit.render`. Imported on first
use: when a report is asked for, or a test report follows an audit or a padaudit error.
"""

from __future__ import annotations

import os
from collections.abc import Generator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from .. import __version__
from ..core.errors import PadAuditError, PadLeakError
from . import REPORTS

#: the TestReport attribute that holds the audits run since the previous report.
ATTR = "padaudit_audits"
SECTION = "padaudit reproduction"
DEFAULT_PATHS = {
    "json": "padaudit-report.json",
    "json-pretty": "padaudit-report.json",
    "md": "padaudit-report.md",
}
_SENT: pytest.StashKey[int] = pytest.StashKey()
#: the installed package: its frames are left out of a usage error's traceback.
PACKAGE = Path(__file__).resolve().parents[1]
_MARKUP = {
    "leak": {"red": True, "bold": True},
    "allowed": {"yellow": True},
    "audit": {"bold": True},
}


class Target(NamedTuple):
    """One requested report: its kind and, for files, the path (None: the default)."""

    kind: str
    path: str | None = None


def makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Attach the audits run since the last report: JUnit properties, data, reproduction.

    A usage error from ``audit()`` or the fixture is shown at the user's line, as the
    marker's is: the frames inside padaudit are left out (``--fulltrace`` keeps them).
    The plugin's ``pytest_runtest_makereport`` delegates here.
    """
    _user_frames_only(item, call)
    audits = item.stash.get(REPORTS, [])[item.stash.get(_SENT, 0) :]
    if not audits:  # a padaudit error, or every audit already sent
        return _headline_only(call, (yield))
    from ..render import report as render  # rendering loads only when an audit ran

    new = [render.primitives(a.to_dict()) for a in audits]
    item.stash[_SENT] = item.stash.get(_SENT, 0) + len(audits)
    for audit in new:  # item.user_properties reach the teardown report, which junitxml reads
        item.user_properties.extend(render.junit_properties(audit))
    report = yield
    setattr(report, ATTR, new)
    report.sections.extend((SECTION, render.reproduction(a)) for a in new if not a["passed"])
    return _headline_only(call, report)


def _headline_only(call: pytest.CallInfo[None], report: pytest.TestReport) -> pytest.TestReport:
    """Keep the short summary to the error's first line; on CI pytest prints it whole."""
    if call.excinfo is not None and isinstance(call.excinfo.value, PadAuditError | PadLeakError):
        crash = getattr(report.longrepr, "reprcrash", None)
        if crash is not None and crash.message:
            crash.message = crash.message.splitlines()[0]
    return report


def _user_frames_only(item: pytest.Item, call: pytest.CallInfo[None]) -> None:
    excinfo = call.excinfo
    if (
        excinfo is None
        or not isinstance(excinfo.value, PadAuditError)
        or item.config.getoption("fulltrace", False)
    ):
        return
    kept = [e._rawentry for e in excinfo.traceback if not _inside_padaudit(e.path)]
    if not kept or len(kept) == len(excinfo.traceback):
        return  # raised by padaudit alone (the marker's path), or through no frame of ours
    for raw, after in zip(kept, [*kept[1:], None], strict=True):
        raw.tb_next = after  # relink: pytest rebuilds tracebacks from the raw chain
    excinfo.traceback = _pytest_traceback(kept[0])


def _pytest_traceback(tb: Any) -> Any:
    from _pytest._code import Traceback

    return Traceback(tb)


def _inside_padaudit(path: Any) -> bool:
    try:
        return Path(path).resolve().is_relative_to(PACKAGE)
    except (TypeError, ValueError, OSError):
        return False


class ReportSession:
    """Collect the audits of a session (merged from xdist workers) and write the reports."""

    def __init__(self, config: pytest.Config, targets: Sequence[tuple[str, str | None]]) -> None:
        self.config = config
        self.targets = [Target(*t) for t in targets]
        self.audits: list[dict[str, Any]] = []
        #: (line, ok) for the terminal: where each file went, or why it did not.
        self.written: list[tuple[str, bool]] = []

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.outcome != "rerun":  # pytest-rerunfailures: the last run counts
            self.audits.extend(getattr(report, ATTR, ()))

    def ordered(self) -> list[dict[str, Any]]:
        """Return the audits by test id, each test's audits in the order they ran."""
        return sorted(self.audits, key=lambda a: str(a.get("test")))

    def pytest_sessionfinish(self) -> None:
        from ..render import report as render  # rendering loads only when used

        audits = self.ordered()
        for target in self.targets:
            if target.kind in ("json", "json-pretty"):
                data = render.build_json(audits, f"pytest-padaudit {__version__}")
                self.config.hook.pytest_padaudit_report_json(config=self.config, data=data)
                from ..core.hooks import plugin_manager

                plugin_manager().hook.padaudit_report_json(config=self.config, data=data)
                self._write(target, render.dump_json(data, pretty=target.kind != "json"))
            elif target.kind == "md":
                self._write(target, render.render_markdown(audits))

    def _write(self, target: Target, text: str) -> None:
        summary = os.environ.get("GITHUB_STEP_SUMMARY")
        append = target.kind == "md" and target.path is None and bool(summary)
        name = summary if append else target.path or DEFAULT_PATHS[target.kind]
        path = self.config.invocation_params.dir / Path(str(name))
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a" if append else "w", encoding="utf-8") as out:
                out.write(text)
        except OSError as exc:
            self.written.append((f"padaudit {target.kind} report NOT written: {exc}", False))
            return
        how = "appended to" if append else "written to"
        self.written.append((f"padaudit {target.kind} report {how} {path}", True))

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        from ..render import report as render  # rendering loads only when used

        tr = terminalreporter
        if any(t.kind == "term" for t in self.targets):
            audits = self.ordered()
            tr.write_sep("=", "padaudit report")
            width = self.config.get_terminal_writer().fullwidth
            for line, status in render.render_table(audits, width):
                tr.write_line(line, **_MARKUP.get(status, {}))
            if not audits:
                tr.write_line("no test ran a padaudit audit")
            else:
                summary = render.summarize(audits)
                leaking = summary["leaking"] > 0 or summary["failed_audits"] > 0
                tr.write_line(render.total_line(summary), bold=True, red=leaking, green=not leaking)
        for line, ok in self.written:
            tr.write_line(line, red=not ok)
