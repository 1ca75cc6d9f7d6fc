"""The landing page `/` in a real browser: the exporter runs on a sick fixture host tree
(tests/check_trees.py), the tree gets worse between two collections (conntrack drops a full
table's packets, a Service loses its backends), and headless Chromium (Debian `chromium`) loads
the page. The verdicts table must render above the collectors, with the failing verdict first,
and a screenshot is taken. docs/images/landing-page.png is that screenshot:
    NETSTACK_UPDATE_SCREENSHOT=1 .venv/bin/python -m pytest tests/e2e/test_landing.py
"""

from __future__ import annotations

import html.parser
import os
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.check_trees import HostTree
from tests.helpers import ROOT, Exporter, need, need_tool

pytestmark = pytest.mark.e2e

SCREENSHOT = ROOT / "docs" / "images" / "landing-page.png"
WINDOW = (1100, 820)


def chromium(*args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    """One headless Chromium run with a fresh profile; nothing phones home (no component
    updates, sync or background networking), and as root without its sandbox."""
    binary = need_tool("chromium", "chromium")
    profile = tempfile.mkdtemp(prefix="nse-check-chromium-")
    try:
        flags = [
            "--headless",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--disable-default-apps",
            "--hide-scrollbars",
            "--force-device-scale-factor=1",
            f"--user-data-dir={profile}",
            f"--window-size={WINDOW[0]},{WINDOW[1]}",
        ]
        if os.geteuid() == 0:
            flags.append("--no-sandbox")
        return subprocess.run(
            [binary, *flags, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "HOME": profile},
        )
    finally:
        shutil.rmtree(profile, ignore_errors=True)


class Tables(html.parser.HTMLParser):
    """The rendered DOM's tables: id -> rows of (tr class, [cell texts])."""

    def __init__(self):
        super().__init__()
        self.tables: dict[str, list[tuple[str, list[str]]]] = {}
        self.order: list[str] = []
        self._table = self._row = self._cell = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self._table = a.get("id") or f"table{len(self.tables)}"
            self.tables[self._table] = []
            self.order.append(self._table)
        elif tag == "tr" and self._table:
            self._row = (a.get("class") or "", [])
            self.tables[self._table].append(self._row)
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row[1].append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "table":
            self._table = self._row = None


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", "not a PNG"
    return struct.unpack(">II", data[16:24])


@pytest.fixture
def sick_exporter(tmp_path):
    tree = HostTree(tmp_path / "host")
    tree.healthy()
    with Exporter(*tree.args()) as exporter:
        exporter.scrape()  # the first collection: the rates start here
        tree.tick(seconds=1.0)  # some CPU time passes (a plausible amount for any interval)
        tree.conntrack(entries=250000, cpu=1, drop=40, early_drop=5, insert_failed=3)
        tree.ipvs_drop_backends("TCP  0A600001:01BB")
        exporter.scrape()  # as Prometheus would: the page shows the verdicts of the recent collections
        yield exporter


def test_landing_page_shows_the_failing_verdict_first(sick_exporter, tmp_path):
    url = sick_exporter.url + "/"
    dom = chromium("--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    tables = Tables()
    tables.feed(dom.stdout)
    assert tables.order[0] == "verdicts", "the verdicts come before the collectors table"
    header, *rows = tables.tables["verdicts"]
    assert header[1] == ["status", "check", "measured", "threshold", "why / what to do"]
    statuses = [cells[0] for _, cells in rows]
    assert statuses[0] == "fail" and rows[0][0] == "verdict fail"
    assert rows[0][1][1] == "Conntrack drops because the table is full"
    # worst first: every fail before every warn before skip before ok
    rank = {"fail": 0, "warn": 1, "skip": 2, "ok": 3}
    assert statuses == sorted(statuses, key=rank.__getitem__)
    warned = {cells[1] for _, cells in rows if cells[0] == "warn"}
    assert {
        "Conntrack table fill",
        "IPVS services without backends (black holes)",
        "Conntrack insert failures (the DNS 5 s race)",
    } <= warned
    assert "Traffic to a virtual service without a backend is dropped" in dom.stdout  # the why
    collectors = tables.tables[tables.order[1]]
    assert collectors[0][1][0] == "collector" and len(collectors) > 5

    shot = tmp_path / "landing.png"
    result = chromium(f"--screenshot={shot}", url)
    assert result.returncode == 0 and shot.exists(), result.stderr[-2000:]
    assert png_size(shot) == WINDOW
    assert shot.stat().st_size > 20_000, "a blank page compresses to almost nothing"
    if os.environ.get("NETSTACK_UPDATE_SCREENSHOT"):
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, SCREENSHOT)


def test_the_committed_screenshot_is_a_small_png_of_the_page():
    need(SCREENSHOT.exists(), f"{SCREENSHOT} missing: NETSTACK_UPDATE_SCREENSHOT=1 this test")
    assert png_size(SCREENSHOT) == WINDOW
    assert SCREENSHOT.stat().st_size < 300_000
