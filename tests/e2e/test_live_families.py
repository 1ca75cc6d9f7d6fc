"""tests/fixtures/golden/live.prom, the families only a live kernel produces (docs/metrics.md is
generated from it), against a live scrape: each collector of scripts/gen_metrics_doc.py
LIVE_COLLECTORS alone, in a network namespace set up for it. Names, types, help texts and label
names must match; values are the kernel's and are not compared.

Regenerate after an intended change (as root): .venv/bin/python -m tests.e2e.test_golden --regenerate
"""

from __future__ import annotations

import pytest

from scripts.gen_metrics_doc import LIVE_COLLECTORS, entries, live_blocks, live_scrape
from tests.helpers import need_root

pytestmark = pytest.mark.root


def shape(text: str) -> dict[str, tuple[str, str, list[str]]]:
    return {name: (e.type, e.help, sorted(e.labels)) for name, e in entries(text).items()}


@pytest.mark.parametrize("collector", list(LIVE_COLLECTORS))
def test_live_families_match_the_committed_list(collector):
    need_root()
    committed = live_blocks().get(collector)
    assert committed is not None, f"{collector} has no block in live.prom: regenerate"
    assert shape(live_scrape(collector)) == shape(committed), (
        "live families changed; regenerate: .venv/bin/python -m tests.e2e.test_golden --regenerate"
    )
