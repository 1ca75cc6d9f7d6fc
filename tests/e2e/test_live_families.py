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


def test_promtool_accepts_a_live_scrape_with_every_collector_on(tmp_path):
    """Every registered collector at once on this host (those whose source is missing report
    only their availability), with the options that make them emit the most."""
    import time

    from collectors import MODULES
    from tests.e2e.test_golden import promtool_check
    from tests.helpers import Exporter

    need_root()
    args = [f"--collector.{m}" for m in MODULES]
    for spec in LIVE_COLLECTORS.values():
        args += [a.replace("{tmp}", str(tmp_path)) for a in spec.args if "source=" not in a]
    from scripts.gen_metrics_doc import tracefs_mounted

    with tracefs_mounted(), Exporter(*args) as exp:
        deadline = time.monotonic() + 60
        text = exp.scrape_text()
        while 'netstack_scrape_collector_success{collector="ebpf_drops"} 1' not in text:
            assert time.monotonic() < deadline, exp.log()
            time.sleep(0.5)
            text = exp.scrape_text()
    promtool_check(text)
