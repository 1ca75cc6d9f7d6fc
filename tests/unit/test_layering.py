"""The seam between the framework (exporter/) and the collectors (collectors/), read from the
imports in the code (docs/architecture.md#layout): collectors use the contract, the metric and
exposition types and logs; the framework reaches collectors only through the registry, and the
`check` subcommand also through the two collector modules it is built on."""

from __future__ import annotations

import ast
import logging
from pathlib import Path

from tests.helpers import ROOT

# exporter module -> the collectors modules it may import (and why, in docs/architecture.md)
FRAMEWORK_USES_OF_COLLECTORS = {
    "exporter/main.py": {"collectors"},  # the registry: available_collectors()
    # the check subcommand and the landing page's verdicts: the registry, and the fsync
    # collector's safe probe-file handling for its one-off probe
    "exporter/check.py": {"collectors", "collectors.fsync"},
}
# what collectors may import from the framework
COLLECTOR_USES_OF_FRAMEWORK = {
    "exporter.contract",
    "exporter.metrics",
    "exporter.exposition",
    "exporter.logs",
    "exporter.snapshot",  # release_freed_heap, after a bcc compile
}


def imported_modules(path: Path, package: str) -> set[str]:
    """Absolute names of the modules a file imports (relative imports resolved), at any depth of
    the file (imports inside functions count)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([package, base]) if base else package
            found.add(base)
            # `from collectors import fsync` imports the module collectors.fsync
            found |= {
                f"{base}.{alias.name}" for alias in node.names if (ROOT / base / f"{alias.name}.py").exists()
            }
    return found


def test_the_framework_imports_collectors_only_through_the_registry_and_check():
    uses = {}
    for path in sorted((ROOT / "exporter").glob("*.py")):
        mods = {m for m in imported_modules(path, "exporter") if m.split(".")[0] == "collectors"}
        if mods:
            uses[str(path.relative_to(ROOT))] = mods
    assert uses == FRAMEWORK_USES_OF_COLLECTORS


def test_collectors_use_only_the_contract_types_and_logs_of_the_framework():
    for path in sorted((ROOT / "collectors").glob("*.py")):
        mods = {m for m in imported_modules(path, "collectors") if m.split(".")[0] == "exporter"}
        assert mods <= COLLECTOR_USES_OF_FRAMEWORK, (path.name, mods - COLLECTOR_USES_OF_FRAMEWORK)


def _logger_calls(tree: ast.AST):
    levels = {name.lower() for name in logging.getLevelNamesMapping()} | {"warn", "exception", "log"}
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id in ("log", "logger", "logging")
            and node.func.attr in levels
        ):
            yield node


def test_one_logging_style_log_event_and_tracebacks_at_debug():
    """Events go through log_event (structured fields); a logger is called directly only for a
    debug traceback (exc_info), which the formatters print at --log.level=debug alone."""
    for package in ("exporter", "collectors"):
        for path in sorted((ROOT / package).glob("*.py")):
            if path == ROOT / "exporter" / "logs.py":  # log_event itself
                continue
            for call in _logger_calls(ast.parse(path.read_text())):
                where = f"{path.relative_to(ROOT)}:{call.lineno}"
                assert call.func.attr == "debug", where
                assert any(k.arg == "exc_info" for k in call.keywords), where
                assert len(call.args) == 1 and isinstance(call.args[0], ast.Constant), where


def test_loggers_are_named_netstack_dot_something():
    for package in ("exporter", "collectors"):
        for path in sorted((ROOT / package).glob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "getLogger"
                    and node.args
                ):
                    name = node.args[0]
                    assert isinstance(name, ast.Constant) and name.value.startswith("netstack."), path
