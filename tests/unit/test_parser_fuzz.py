"""Property-based fuzzing of the text parsers (issue 11): mutations of the real fixtures, in the
kernel's (and BIRD's) exact formats. The contract: a parser returns, or raises ParseError, and
does so fast; any other exception, or a slow call, fails the test. The netlink decoders have
their own file (test_netlink_fuzz.py); the settings and the contract check are shared with it.

A deeper run: NETSTACK_FUZZ_EXAMPLES=20000 .venv/bin/python -m pytest -q tests/unit/test_parser_fuzz.py
"""

from __future__ import annotations

from functools import cache

import pytest
from hypothesis import given
from hypothesis import strategies as st

from collectors import bgp, common, conntrack, cpu, ebpf_loader, fsync, ipvs, netstat, softirq, virtualization
from tests.helpers import FIXTURES
from tests.unit.test_netlink_fuzz import FUZZ, holds_contract


@cache
def seed(relative: str) -> str:
    return (FIXTURES / relative).read_text()


def mutations(text: str) -> st.SearchStrategy[str]:
    """The seed with lines dropped, doubled, cut or changed, and characters inserted: the ways a
    racy read, a torn file or a hostile source differs from what the kernel writes."""
    lines = text.split("\n")
    junk = st.one_of(
        st.text(alphabet=st.sampled_from(list('0123456789abcdefABCDEF:- \t{}(),"x\n')), max_size=40),
        st.sampled_from(["9" * 400, "f" * 3600, " " * 300, "-1", "0-100000000"]),
    )

    @st.composite
    def mutate(draw) -> str:
        out = list(lines)
        for _ in range(draw(st.integers(1, 4))):
            if not out:
                break
            i = draw(st.integers(0, len(out) - 1))
            op = draw(st.sampled_from(["drop", "double", "cut", "insert", "replace_token"]))
            if op == "drop":
                del out[i]
            elif op == "double":
                out.insert(i, out[i])
            elif op == "cut":
                out[i] = out[i][: draw(st.integers(0, len(out[i])))]
            elif op == "insert":
                at = draw(st.integers(0, len(out[i])))
                out[i] = out[i][:at] + draw(junk) + out[i][at:]
            else:
                tokens = out[i].split(" ")
                tokens[draw(st.integers(0, len(tokens) - 1))] = draw(junk)
                out[i] = " ".join(tokens)
        return "\n".join(out)

    return mutate()


PARSERS = {
    "proc_stat": (lambda t: cpu.parse_proc_stat(t, "stat"), "procfs/stat"),
    "softirqs": (lambda t: softirq.parse_softirqs(t, "softirqs"), "procfs/softirqs"),
    "softnet_stat": (lambda t: softirq.parse_softnet_stat(t, "softnet_stat"), "softnet/softnet_stat.13"),
    "nf_conntrack": (lambda t: conntrack.parse_procfs_stats(t, "nf_conntrack"), "conntrack/stat-6.18.txt"),
    "ip_vs": (lambda t: ipvs.parse_ip_vs(t, "ip_vs", want_dests=True), "ipvs/full/net/ip_vs"),
    "ip_vs_stats": (lambda t: ipvs.parse_ip_vs_stats(t, "ip_vs_stats"), "ipvs/full/net/ip_vs_stats"),
    "mountinfo": (lambda t: fsync.parse_mountinfo(t, "mountinfo"), "fsync/proc/self/mountinfo"),
    "snmp": (lambda t: netstat.parse_snmp(t, "snmp"), "netstat/linux-6.18-receiver/net/snmp"),
    "snmp6": (lambda t: netstat.parse_snmp6(t, "snmp6"), "netstat/linux-6.18-receiver/net/snmp6"),
    "bird_protocols": (lambda t: bgp.parse_protocols(t, "bird"), "bgp/bird2-show-protocols-all.txt"),
    "bird_banner": (lambda t: bgp.parse_banner(t, "bird"), "bgp/bird1-show-protocols.txt"),
    "tracepoint_format": (
        lambda t: ebpf_loader.print_symbolic(ebpf_loader.parse_format(t, "format"), "reason", "format"),
        "ebpf_drops/kfree_skb_format_6.18",
    ),
    "cpu_list": (lambda t: common.parse_cpu_list(t, "online"), None),
    "cpu_flags": (lambda t: virtualization.parse_cpu_flags(t), "procfs/stat"),
}
SEEDS = {"cpu_list": "0-3,8,10-11\n"}


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_parser_returns_or_raises_parse_error_fast(name):
    parse, fixture = PARSERS[name]
    text = SEEDS.get(name) or seed(fixture)
    holds_contract(parse, text)  # the seed itself parses

    @FUZZ
    @given(mutations(text))
    def fuzz(mutated: str) -> None:
        holds_contract(parse, mutated)

    fuzz()
