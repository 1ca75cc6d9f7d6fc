"""The libbpf backend and the CO-RE objects without the kernel: the two programs of a collector
keep the same maps and slots, the backend choice and its reasons, what libbpf and the verifier
say turned into reasons, and the build script naming a missing tool."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from collectors import ebpf_libbpf
from collectors.ebpf_libbpf import (
    LibbpfLoader,
    _failed_program,
    possible_cpus,
    verifier_tail,
    verifier_verdict,
)
from collectors.ebpf_loader import bpf_source, choose_loader, eperm_cause, seccomp_mode
from exporter.contract import SourceUnavailable
from tests.helpers import ROOT

STATUS = "Name:\tpython3\nCapEff:\t{caps:016x}\nSeccomp:\t{seccomp}\n"
BPF_PERFMON = (1 << 39) | (1 << 38)


def _body(source: str, name: str) -> str:
    """A C function's body with types normalised (u64 in bcc, __u64 with vmlinux.h)."""
    m = re.search(rf"{name}\([^)]*\)\n\{{\n(.*?)\n\}}", source, re.S)
    assert m, name
    return re.sub(r"\b__(u\d\d)\b", r"\1", m.group(1))


def _maps(source: str) -> dict[str, str]:
    """{map name: map type} from either program's map declarations."""
    found = dict((name, kind) for kind, name in re.findall(r"BPF_(PERCPU_ARRAY|PERCPU_HASH)\((\w+),", source))
    found.update(
        (name, kind)
        for kind, name in re.findall(r"__uint\(type, BPF_MAP_TYPE_(\w+)\);.*?\} (\w+) SEC", source, re.S)
    )
    found.update((name, "PERCPU_ARRAY") for name in re.findall(r"^PERCPU_ARRAY\((\w+),", source, re.M))
    found.pop("name", None)  # the macro's own parameter in softirq.bpf.c
    return found


@pytest.mark.parametrize("program", ["softirq", "drops"])
def test_both_programs_keep_the_same_maps(program):
    bcc, core = bpf_source(f"{program}.c"), bpf_source(f"{program}.bpf.c")
    assert _maps(bcc) == _maps(core) and _maps(bcc)
    # same constants (NR_SLOTS, MAX_VECS, MAX_REASONS, ...)
    for const in re.findall(r"#define (\w+) ", bcc):
        assert re.search(rf"#define {const} ", core), const


def test_slot_function_and_recording_are_the_same_code():
    bcc, core = bpf_source("softirq.c"), bpf_source("softirq.bpf.c")
    assert _body(bcc, "slot_of") == _body(core, "slot_of")
    assert _body(bcc, "wanted") == _body(core, "wanted")
    # record(): the same index arithmetic, the same increments
    for line in (
        "(kind * NR_VECS + vec) * NR_SLOTS + slot_of(ns)",
        "idx = kind * NR_VECS + vec",
        "*count += 1",
        "*sum += ns",
    ):
        assert line in _body(bcc, "record") and line in _body(core, "record")


def test_programs_are_named_like_the_bcc_functions():
    """The collectors attach by function name; the CO-RE programs use bcc's names."""
    core = bpf_source("softirq.bpf.c") + bpf_source("drops.bpf.c")
    for event in ("softirq_raise", "softirq_entry", "softirq_exit"):
        assert f'SEC("raw_tp/{event}")\nint BPF_PROG(tracepoint__irq__{event},' in core
    assert 'SEC("raw_tp/kfree_skb")\nint BPF_PROG(tracepoint__skb__kfree_skb,' in core
    code = re.sub(r"//.*", "", core)
    assert "->" not in code and "BPF_CORE_READ" not in code  # no kernel struct is read


def test_possible_cpus():
    assert possible_cpus("0-3\n") == [0, 1, 2, 3]
    assert possible_cpus("0,2-3,8\n") == [0, 2, 3, 8]
    assert possible_cpus("0\n") == [0]


def test_verifier_verdict_skips_the_statistics():
    log = (
        "func#0 @0\n0: R1=ctx() R10=fp0\n; *count += 1;\n7: (79) r1 = *(u64 *)(r0 +0)\n"
        "R0 invalid mem access 'map_value_or_null'\n"
        "processed 7 insns (limit 1000000) max_states_per_insn 0 total_states 0\n\n"
    )
    tail = verifier_tail(log, 3)
    assert tail == [
        "7: (79) r1 = *(u64 *)(r0 +0)",
        "R0 invalid mem access 'map_value_or_null'",
        "processed 7 insns (limit 1000000) max_states_per_insn 0 total_states 0",
    ]
    assert verifier_verdict(tail) == "R0 invalid mem access 'map_value_or_null'"
    assert verifier_verdict([]) == ""


def test_failed_program_from_libbpf_messages():
    messages = [
        "libbpf: map 'drops': created successfully, fd=4",
        "libbpf: prog 'tracepoint__skb__kfree_skb': BPF program load failed: Permission denied",
        "libbpf: failed to load object 'drops.bpf.o'",
    ]
    assert _failed_program(messages) == "tracepoint__skb__kfree_skb"
    assert _failed_program(messages[:1]) == ""


def test_eperm_cause_tells_capabilities_seccomp_and_lsm_apart():
    assert seccomp_mode(STATUS.format(caps=0, seccomp=2)) == 2
    assert seccomp_mode("Name:\tx\n") == 0
    assert eperm_cause(STATUS.format(caps=0, seccomp=0)).startswith("missing CAP_BPF + CAP_PERFMON")
    assert "seccomp filter denies bpf()" in eperm_cause(STATUS.format(caps=BPF_PERFMON, seccomp=2))
    assert "security module" in eperm_cause(STATUS.format(caps=BPF_PERFMON, seccomp=0))


def test_choose_loader(tmp_path, monkeypatch):
    assert choose_loader("libbpf", "drops").name == "libbpf"
    assert choose_loader("bcc", "drops").name == "bcc"
    # auto without objects and without bcc: unavailable, with both backends' reasons
    monkeypatch.setattr(ebpf_libbpf, "OBJECTS_DIR", str(tmp_path))
    monkeypatch.setitem(sys.modules, "bcc", None)
    with pytest.raises(SourceUnavailable) as e:
        choose_loader("auto", "drops")
    assert str(e.value).startswith("no eBPF backend can run here; libbpf: no BPF object ")
    assert "scripts/build_bpf.py" in str(e.value) and "; bcc: bcc is not importable" in str(e.value)


def test_missing_object_names_the_build(tmp_path):
    with pytest.raises(
        SourceUnavailable,
        match=r"no BPF object .*drops.bpf.o: this installation "
        r"was built without clang",
    ):
        LibbpfLoader(str(tmp_path)).check_available("drops")


def test_build_script_names_the_missing_tool(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "build_bpf.py"), "--out", str(tmp_path)],
        env={"PATH": str(tmp_path)},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "build_bpf: clang not found: building the BPF objects needs it (Debian: apt-get install clang llvm)"
    )
    assert list(tmp_path.iterdir()) == []
