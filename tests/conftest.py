"""In CI every test must really run: a skip there means CI failed to provide a prerequisite."""

import logging

import pytest

from exporter.logs import JsonFormatter, LogfmtFormatter
from tests.helpers import IN_CI


def pytest_sessionfinish(session, exitstatus):
    if not IN_CI:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = len(reporter.stats.get("skipped", [])) if reporter else 0
    if skipped and exitstatus == pytest.ExitCode.OK:
        reporter.write_line(f"CI=true: {skipped} test(s) skipped; in CI a skip is a failure", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


_ROOT_LEVEL = logging.getLogger().level


@pytest.fixture(autouse=True)
def _restore_logging():
    """Tests (and module fixtures) that run the exporter's or check's main() in-process set up
    the root logger as the process would (its level, a stderr handler): undo that before each
    test, so caplog sees what it should whatever ran before."""
    root = logging.getLogger()
    root.setLevel(_ROOT_LEVEL)
    root.handlers[:] = [
        h for h in root.handlers if not isinstance(h.formatter, (LogfmtFormatter, JsonFormatter))
    ]
    yield
