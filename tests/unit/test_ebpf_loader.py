"""Pure parts of the eBPF support: tracefs format parsing, log2 slots -> exact buckets,
capabilities, header discovery, the background loader's states. No kernel, no bcc needed."""

from __future__ import annotations

import sys
import threading

import pytest

from collectors.ebpf_loader import (
    BackgroundLoad,
    BccLoader,
    Program,
    StillLoading,
    can_trace,
    effective_capabilities,
    find_kernel_headers,
    find_tracefs,
    log2_buckets,
    parse_format,
    print_symbolic,
    slot_of,
    slot_upper_bound_ns,
)
from exporter.contract import ParseError, SourceUnavailable
from tests.helpers import FIXTURES

DROPS = FIXTURES / "ebpf_drops"
SOFTIRQ = FIXTURES / "ebpf_softirq"


# --- format files -----------------------------------------------------------------------------


def test_parse_format_fields_of_two_kernel_versions():
    old = parse_format((DROPS / "kfree_skb_format_6.1").read_text())
    new = parse_format((DROPS / "kfree_skb_format_6.18").read_text())
    assert old.name == new.name == "kfree_skb"
    # 6.18 added rx_sk, which moved reason: the layout is the running kernel's, not the headers'.
    assert (old.fields["reason"].offset, old.fields["reason"].size) == (28, 4)
    assert (new.fields["reason"].offset, new.fields["reason"].size) == (36, 4)
    assert old.fields["reason"].type == "enum skb_drop_reason"
    assert new.fields["skbaddr"].type == "void *"
    assert "rx_sk" in new.fields and "rx_sk" not in old.fields
    assert new.fields["common_pid"].offset == 4


def test_print_symbolic_reason_numbering_differs_between_versions():
    old = print_symbolic(parse_format((DROPS / "kfree_skb_format_6.1").read_text()), "reason")
    new = print_symbolic(parse_format((DROPS / "kfree_skb_format_6.18").read_text()), "reason")
    # 6.1: NOT_SPECIFIED = 1; 6.3 inserted SKB_CONSUMED, so on 6.18 everything moved by one.
    assert old[1] == "NOT_SPECIFIED" and old[2] == "NO_SOCKET"
    assert new[2] == "NOT_SPECIFIED" and new[3] == "NO_SOCKET"
    assert len(old) == 66 and old[66] == "MAX"
    assert len(new) == 127 and new[128] == "MAX"
    assert new[109] == "VXLAN_INVALID_HDR" and 109 not in old
    # every name once, all values distinct
    assert len(set(new.values())) == len(new)


def test_print_symbolic_softirq_vectors():
    fmt = parse_format((SOFTIRQ / "softirq_raise_format_6.18").read_text())
    assert fmt.fields["vec"].type == "unsigned int"
    assert print_symbolic(fmt, "vec") == {
        0: "HI",
        1: "TIMER",
        2: "NET_TX",
        3: "NET_RX",
        4: "BLOCK",
        5: "IRQ_POLL",
        6: "TASKLET",
        7: "SCHED",
        8: "HRTIMER",
        9: "RCU",
    }


def test_print_symbolic_table_ends_at_its_own_parenthesis():
    fmt = parse_format(
        'name: x\nformat:\nprint fmt: "%s %d", __print_symbolic(REC->a, '
        '{ 1, "A)" }, { 2, "B" }), __print_symbolic(REC->b, { 3, "C" })\n'
    )
    assert print_symbolic(fmt, "a") == {1: "A)", 2: "B"}
    assert print_symbolic(fmt, "b") == {3: "C"}


def test_print_symbolic_rejects_unresolved_enum_names():
    text = (
        (SOFTIRQ / "softirq_raise_format_6.18")
        .read_text()
        .replace('{ 3, "NET_RX" }', '{ NET_RX_SOFTIRQ, "NET_RX" }')
    )
    with pytest.raises(ParseError, match=r"not a number"):
        print_symbolic(parse_format(text), "vec")


def test_print_symbolic_missing_table():
    fmt = parse_format((DROPS / "kfree_skb_format_5.10").read_text())
    with pytest.raises(ParseError, match=r"no __print_symbolic table for field 'reason'"):
        print_symbolic(fmt, "reason")


def test_parse_format_rejects_other_files():
    with pytest.raises(ParseError, match=r"not a tracepoint format file"):
        parse_format("cpu  1 2 3\n", "/proc/stat")
    with pytest.raises(ParseError, match=r"x:3: unexpected field line"):
        parse_format("name: a\nformat:\n\tfield:;\toffset:x;\n", "x")


# --- log2 slots and buckets ------------------------------------------------------------------


def test_slot_boundaries():
    # slot 0 holds only 0; slot s >= 1 holds [2^(s-1), 2^s)
    assert [slot_of(v) for v in (0, 1, 2, 3, 4, 7, 8)] == [0, 1, 2, 2, 3, 3, 4]
    for s in range(1, 64):
        assert slot_of(1 << (s - 1)) == s
        assert slot_of((1 << s) - 1) == s
        assert slot_of(1 << s) == s + 1
        assert slot_upper_bound_ns(s) == (1 << s) - 1
    assert slot_upper_bound_ns(0) == 0


def _values_at_every_boundary():
    values = [0, 0, 1, 5]
    for s in range(1, 40):
        values += [(1 << s) - 1, 1 << s, (1 << s) + 1]
    return values


@pytest.mark.parametrize("first,last", [(0, 40), (8, 32), (3, 5)])
def test_buckets_are_exact_at_every_boundary(first, last):
    values = _values_at_every_boundary()
    slots: dict[int, int] = {}
    for v in values:
        slots[slot_of(v)] = slots.get(slot_of(v), 0) + 1
    buckets = log2_buckets(slots, first, last)
    assert len(buckets) == last - first + 2
    assert buckets[-1] == ("+Inf", len(values))
    for le, count in buckets[:-1]:
        le_ns = round(float(le) * 1e9)
        # the cumulative count is exactly the number of values <= le
        assert count == sum(1 for v in values if v <= le_ns), le
    counts = [c for _, c in buckets]
    assert counts == sorted(counts)


def test_bucket_boundaries_are_two_to_the_s_minus_one_ns():
    buckets = log2_buckets({}, 8, 10)
    assert buckets == [("2.55e-07", 0), ("5.11e-07", 0), ("1.023e-06", 0), ("+Inf", 0)]


# --- privileges, headers, tracefs ------------------------------------------------------------


def test_capabilities():
    root = effective_capabilities("Name:\tpython\nCapPrm:\t000001ffffffffff\nCapEff:\t000001ffffffffff\n")
    assert can_trace(root)
    assert not can_trace(effective_capabilities("CapEff:\t0000000000000000\n"))
    assert can_trace((1 << 39) | (1 << 38))  # CAP_BPF + CAP_PERFMON
    assert not can_trace(1 << 39)  # CAP_BPF alone cannot attach tracepoints
    assert can_trace(1 << 21)  # CAP_SYS_ADMIN
    with pytest.raises(ParseError):
        effective_capabilities("Name:\tx\n")


def test_kernel_headers_discovery(tmp_path):
    tree = tmp_path / "tree"
    (tree / "include").mkdir(parents=True)
    assert find_kernel_headers(
        "6.18.0", {"BCC_KERNEL_SOURCE": str(tree)}, str(tmp_path / "nomodules"), str(tmp_path / "nokh")
    ) == str(tree)
    with pytest.raises(SourceUnavailable, match=r"BCC_KERNEL_SOURCE=.* is not a kernel header tree"):
        find_kernel_headers(
            "6.18.0", {"BCC_KERNEL_SOURCE": str(tmp_path)}, str(tmp_path), str(tmp_path / "nokh")
        )
    build = tmp_path / "modules" / "6.18.0" / "build"
    (build / "include").mkdir(parents=True)
    assert find_kernel_headers("6.18.0", {}, str(tmp_path / "modules"), str(tmp_path / "nokh")) == str(build)
    with pytest.raises(SourceUnavailable, match=r"no kernel headers for 6.19.0: .*kernel-headers.sh"):
        find_kernel_headers("6.19.0", {}, str(tmp_path / "modules"), str(tmp_path / "nokh"))


def test_find_tracefs(tmp_path):
    (tmp_path / "b" / "events").mkdir(parents=True)
    assert find_tracefs([str(tmp_path / "a"), str(tmp_path / "b")]) == str(tmp_path / "b")
    with pytest.raises(SourceUnavailable, match=r"tracefs is not mounted"):
        find_tracefs([str(tmp_path / "a")])


def test_bcc_not_importable(monkeypatch):
    monkeypatch.setitem(sys.modules, "bcc", None)  # makes `import bcc` raise ImportError
    with pytest.raises(SourceUnavailable, match=r"bcc is not importable.*python3-bpfcc"):
        BccLoader().check("drops")


# --- background load -------------------------------------------------------------------------


class _Program(Program):
    """Stands in for a loaded BPF object: records close()."""

    def __init__(self):
        self.closed = 0

    def read_map(self, name):
        return {}

    def close(self):
        self.closed += 1


def _gated_load() -> tuple[BackgroundLoad, threading.Event, _Program]:
    """A BackgroundLoad whose setup waits for the returned gate, then hands out the program."""
    gate = threading.Event()
    program = _Program()

    def setup():
        gate.wait(5)
        return program

    load = BackgroundLoad("t", setup)
    load.start()
    return load, gate, program


def test_background_load_states():
    load, gate, program = _gated_load()
    with pytest.raises(StillLoading):
        load.program()
    load.raise_if_failed()  # loading is not failing
    gate.set()
    assert load.wait(5)
    assert load.program() is program and load.seconds is not None
    load.close()
    assert program.closed == 1


def test_background_load_failure_is_a_one_line_reason():
    def setup():
        raise SourceUnavailable("BPF compile/load failed: Failed to compile BPF module <text>")

    load = BackgroundLoad("t", setup)
    load.start()
    assert load.wait(5)
    with pytest.raises(SourceUnavailable, match=r"compile/load failed"):
        load.program()
    with pytest.raises(SourceUnavailable):
        load.raise_if_failed()

    load = BackgroundLoad("t", lambda: 1 / 0)  # a bug: still only a reason, not a crash
    load.start()
    assert load.wait(5)
    with pytest.raises(SourceUnavailable, match=r"BPF setup failed: division by zero"):
        load.program()


def test_close_while_loading_detaches_when_load_finishes():
    load, gate, program = _gated_load()
    closer = threading.Thread(target=load.close)
    closer.start()
    gate.set()
    closer.join(5)
    assert program.closed == 1
    with pytest.raises(SourceUnavailable, match=r"closed"):  # never handed out after close
        load.program()


def test_hostile_print_symbolic_table_is_linear():
    """A table that made the old pattern backtrack for seconds ('{' + 2000 spaces + 'x')."""
    import time

    from collectors.ebpf_loader import TracepointFormat

    for tail in (" " * 2000 + "x", ("{ 1" + " " * 50) * 200, "{" * 3000):
        fmt = TracepointFormat("kfree_skb", {}, '"%s", __print_symbolic(REC->reason, {' + tail + "))")
        start = time.process_time()
        with pytest.raises(ParseError):
            print_symbolic(fmt, "reason")
        assert time.process_time() - start < 0.5


@pytest.mark.parametrize(
    "status", ["CapEff:\tzz\n", "CapEff:\n", "CapEff:\t" + "f" * 400 + "\n", "Name: x\n"]
)
def test_bad_capability_lines_are_parse_errors(status):
    from collectors.ebpf_loader import effective_capabilities

    with pytest.raises(ParseError):
        effective_capabilities(status)


def test_field_offsets_with_thousands_of_digits_are_parse_errors():
    text = "name: x\n\tfield:int a;\toffset:" + "9" * 5000 + ';\tsize:4;\tsigned:1;\nprint fmt: ""\n'
    with pytest.raises(ParseError):
        parse_format(text)
