"""ebpf_drops: packets the kernel dropped, by the kernel's own drop reason (skb:kfree_skb).

Interface counters say that packets were dropped, not why. Since 5.17 the kfree_skb tracepoint
carries an `enum skb_drop_reason`. The BPF program (bpf/drops.bpf.c for libbpf, bpf/drops.c for
bcc: the same map) counts drops per reason value;
the names come from the running kernel's tracefs format file (its __print_symbolic table), so
they are right whatever header version bcc compiled against — the enum's numbering changes
between kernel versions (NO_SOCKET is 2 on 6.1 and 3 on 6.18).
"""

from __future__ import annotations

from collections.abc import Iterable

from exporter.contract import Option, ParseError, SourceUnavailable
from exporter.metrics import CounterMetricFamily, Metric

from .ebpf_loader import (
    BACKEND_OPTION,
    BTF_PATH_OPTION,
    TracepointCollector,
    find_tracefs,
    print_symbolic,
    read_tracepoint_format,
)


def reason_names(fmt, source: str = "kfree_skb format") -> dict[int, str]:
    """{reason value: name} from kfree_skb's format; SourceUnavailable if it has no reason."""
    if "reason" not in fmt.fields:
        raise SourceUnavailable("skb:kfree_skb has no reason argument (kernel older than 5.17)")
    try:
        return print_symbolic(fmt, "reason", source)
    except ParseError as e:
        raise SourceUnavailable(str(e)) from None


def reason_label(value: int, names: dict[int, str]) -> str:
    return names.get(value, f"UNKNOWN_{value}")


def drops_family(counts: dict[int, int], names: dict[int, str], all_reasons: bool) -> CounterMetricFamily:
    family = CounterMetricFamily(
        "netstack_skb_drops",
        "Packets freed as dropped, by kernel drop reason (eBPF, skb:kfree_skb; names from the "
        "running kernel's tracepoint format).",
        labels=["reason"],
    )
    values = dict.fromkeys(names, 0) if all_reasons else {}
    values.update(counts)
    for value, count in sorted(values.items()):
        family.add_metric([reason_label(value, names)], count)
    return family


class EbpfDrops(TracepointCollector):
    name = "ebpf_drops"
    help = (
        "packet drops by kernel drop reason from the skb:kfree_skb tracepoint, via eBPF "
        "(libbpf or bcc; needs CAP_BPF + CAP_PERFMON and kernel >= 5.17)"
    )
    options = (
        BACKEND_OPTION,
        BTF_PATH_OPTION,
        Option(
            "all-reasons",
            "export every reason the kernel knows, zero until it occurs "
            "(stable series for alerts; ~70-130 series) instead of only those seen",
            False,
            "bool",
        ),
    )

    program_name = "drops"

    def __init__(self, ctx, loader=None):
        super().__init__(ctx, loader)
        self.names: dict[int, str] = {}

    def probe(self) -> None:
        tracefs = find_tracefs()
        fmt = read_tracepoint_format(tracefs, "skb", "kfree_skb")
        self.names = reason_names(fmt, f"{tracefs}/events/skb/kfree_skb/format")
        self.check_loader()

    def tracepoints(self) -> list[tuple[str, str, str]]:
        return [("skb", "kfree_skb", "tracepoint__skb__kfree_skb")]

    def collect(self) -> Iterable[Metric]:
        program = self.program()
        counts = program.read_map("drops")  # reasons below DENSE_REASONS, by index
        counts.update(program.read_map("drops_high"))  # the others (disjoint keys)
        yield drops_family(counts, self.names, self.option("all-reasons"))


COLLECTOR = EbpfDrops
