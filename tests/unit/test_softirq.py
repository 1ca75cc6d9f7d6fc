import pytest

from collectors.softirq import SoftirqCollector, parse_softirqs, parse_softnet_stat
from exporter.contract import Context, ParseError, Paths
from tests.helpers import FIXTURES

SOFTNET = FIXTURES / "softnet"


def test_parse_softirqs_uses_header_cpus():
    cpus, vectors = parse_softirqs((FIXTURES / "procfs/softirqs").read_text())
    assert cpus == ["0", "1", "2", "3"]
    assert vectors["NET_RX"] == [43381201, 41002210, 0, 44007936]
    assert len(vectors) == 10 and "IRQ_POLL" in vectors


@pytest.mark.parametrize(
    "text",
    [
        "",
        "garbage header\n  NET_RX: 1 2\n",
        "  CPU0 CPU1\n  NET_RX: 1\n",  # truncated row
        "  CPU0 CPU1\n  NET_RX: 1 x\n",  # garbage value
        "  CPU0 CPU1\n  NET_RX 1 2\n",  # no colon
    ],
)
def test_parse_softirqs_rejects_malformed(text):
    with pytest.raises(ParseError):
        parse_softirqs(text, "softirqs")


def test_softnet_9_columns_row_number_is_cpu():
    rows = parse_softnet_stat((SOFTNET / "softnet_stat.9").read_text())
    assert [(r.cpu, r.processed, r.dropped, r.time_squeeze) for r in rows] == [
        ("0", 0x1F0A2, 0, 3),
        ("1", 0x1A121, 1, 0),
    ]
    assert rows[0].received_rps is None and rows[0].flow_limit_count is None and rows[0].backlog is None


def test_softnet_10_columns_adds_rps():
    rows = parse_softnet_stat((SOFTNET / "softnet_stat.10").read_text())
    assert rows[0].received_rps == 4 and rows[0].flow_limit_count is None


def test_softnet_11_columns_adds_flow_limit():
    rows = parse_softnet_stat((SOFTNET / "softnet_stat.11").read_text())
    assert rows[1].flow_limit_count == 5 and rows[1].backlog is None
    assert rows[0].processed == 0x6DCAD223


def test_softnet_13_columns_cpu_id_skips_offline_cpu():
    rows = parse_softnet_stat((SOFTNET / "softnet_stat.13").read_text())
    assert [r.cpu for r in rows] == ["0", "2", "3"]
    assert rows[1].dropped == 4 and rows[1].backlog == 5


def test_softnet_15_columns():
    rows = parse_softnet_stat((SOFTNET / "softnet_stat.15").read_text())
    assert [r.cpu for r in rows] == ["0", "1", "3"]
    assert rows[1].backlog == 3 and rows[1].dropped == 7 and rows[2].flow_limit_count == 2


@pytest.mark.parametrize(
    "text",
    [
        "",
        "0001 0002 0003\n",  # truncated: fewer than 9 columns
        "zz01f0a2 00000000 00000003 00000000 00000000 00000000 00000000 00000000 00000000\n",
    ],
)
def test_softnet_rejects_malformed(text):
    with pytest.raises(ParseError):
        parse_softnet_stat(text, "softnet_stat")


def _families(procfs, **options):
    opts = {"all-vectors": False, **options}
    collector = SoftirqCollector(Context(paths=Paths(procfs=str(procfs)), options=opts))
    collector.probe()
    return {f.name: f for f in collector.collect()}


def test_collect_network_vectors_by_default_and_all_on_request():
    fams = _families(FIXTURES / "procfs")
    assert {s.labels["vector"] for s in fams["netstack_softirqs"].samples} == {"NET_RX", "NET_TX"}
    fams = _families(FIXTURES / "procfs", **{"all-vectors": True})
    assert len({s.labels["vector"] for s in fams["netstack_softirqs"].samples}) == 10


def test_collect_budget_sysctls_in_base_units():
    fams = _families(FIXTURES / "procfs")
    assert fams["netstack_softnet_budget_seconds"].samples[0].value == pytest.approx(0.002)
    assert fams["netstack_softnet_budget_packets"].samples[0].value == 300
    assert fams["netstack_softnet_max_backlog_packets"].samples[0].value == 1000


def test_old_kernel_layout_omits_missing_columns(tmp_path):
    (tmp_path / "net").mkdir()
    (tmp_path / "softirqs").write_text((FIXTURES / "procfs/softirqs").read_text())
    (tmp_path / "net/softnet_stat").write_text((SOFTNET / "softnet_stat.9").read_text())
    fams = _families(tmp_path)
    assert "netstack_softnet_received_rps" not in fams
    assert "netstack_softnet_backlog_packets" not in fams
    assert len(fams["netstack_softnet_processed"].samples) == 2


@pytest.mark.parametrize(
    "text",
    [
        "CPU0 CPU0\nNET_RX: 1 2\n",  # a CPU twice
        "CPU0\nNET_RX: 1\nNET_RX: 2\n",  # a vector twice
        "CPU0\nNET_RX: 4294967296\n",  # wider than the kernel's unsigned int
        "CPU0\nNET_RX: " + "9" * 5000 + "\n",  # int() of this many digits is slow
    ],
)
def test_softirqs_rejects_duplicates_and_impossible_counts(text):
    with pytest.raises(ParseError):
        parse_softirqs(text, "softirqs")


@pytest.mark.parametrize(
    "text",
    [
        "0000000a " * 12 + "00000000\n" + "0000000a " * 12 + "00000000\n",  # cpu 0 twice
        "f" * 3600 + " 0 0 0 0 0 0 0 0\n",  # a ~3,600-digit hex value
    ],
)
def test_softnet_rejects_duplicates_and_impossible_counts(text):
    with pytest.raises(ParseError):
        parse_softnet_stat(text, "softnet_stat")


def test_parse_errors_name_the_file_and_line_not_the_content():
    with pytest.raises(ParseError) as e:
        parse_softirqs("CPU0\nSECRET-TOKEN-abc\n", "softirqs")
    assert "softirqs:2" in str(e.value) and "SECRET" not in str(e.value)
