"""ebpf_drops without the kernel: reason names from format files of three kernel versions and
map contents -> the counter family."""

from __future__ import annotations

import shutil

import pytest

from collectors.ebpf_drops import EbpfDrops, drops_family, reason_names
from collectors.ebpf_loader import parse_format
from exporter.contract import Context, SourceUnavailable
from tests.helpers import FIXTURES

FIX = FIXTURES / "ebpf_drops"


def _names(version):
    return reason_names(parse_format((FIX / f"kfree_skb_format_{version}").read_text()))


def test_reason_names_follow_the_running_kernel():
    assert _names("6.1")[2] == "NO_SOCKET"
    assert _names("6.18")[3] == "NO_SOCKET"


def test_kernel_without_reason_is_unavailable():
    with pytest.raises(SourceUnavailable, match=r"no reason argument .kernel older than 5.17"):
        _names("5.10")


def _samples(family):
    return {s.labels["reason"]: s.value for s in family.samples}


def test_family_only_seen_reasons():
    names = _names("6.18")
    family = drops_family({3: 1000, 2: 5, 70000: 2}, names, all_reasons=False)
    assert family.name == "netstack_skb_drops" and family.type == "counter"
    assert {s.name for s in family.samples} == {"netstack_skb_drops_total"}
    # values outside the kernel's table (subsystem reasons carry high bits) stay visible
    assert _samples(family) == {"NO_SOCKET": 1000, "NOT_SPECIFIED": 5, "UNKNOWN_70000": 2}


def test_family_all_reasons():
    names = _names("6.1")
    samples = _samples(drops_family({2: 7}, names, all_reasons=True))
    assert len(samples) == len(names) == 66
    assert samples["NO_SOCKET"] == 7 and samples["TCP_CSUM"] == 0


def test_probe_on_old_kernel_format(tmp_path, monkeypatch):
    d = tmp_path / "events" / "skb" / "kfree_skb"
    d.mkdir(parents=True)
    shutil.copy(FIX / "kfree_skb_format_5.10", d / "format")
    monkeypatch.setattr("collectors.ebpf_loader.TRACEFS_CANDIDATES", (str(tmp_path),))
    collector = EbpfDrops(Context(options={"all-reasons": False}))
    with pytest.raises(SourceUnavailable, match=r"older than 5.17"):
        collector.probe()


def test_probe_without_tracepoint(tmp_path, monkeypatch):
    (tmp_path / "events").mkdir()
    monkeypatch.setattr("collectors.ebpf_loader.TRACEFS_CANDIDATES", (str(tmp_path),))
    with pytest.raises(SourceUnavailable, match=r"tracepoint skb:kfree_skb does not exist"):
        EbpfDrops(Context(options={"all-reasons": False})).probe()


def test_collect_before_start_is_a_clear_failure():
    with pytest.raises(SourceUnavailable, match=r"not started"):
        list(EbpfDrops(Context(options={"all-reasons": False})).collect())
