"""ebpf_drops on the real kernel (root), on both backends: datagrams to a closed port are
counted as NO_SOCKET, exactly, through the real exporter; close() detaches."""

from __future__ import annotations

import pytest

from collectors.ebpf_drops import EbpfDrops
from exporter.contract import Context, SourceUnavailable
from tests.helpers import Exporter, Netns, samples, value
from tests.integration.test_ebpf_loader import backend_env, wait_success  # noqa: F401  (fixture)

N = 5000
SEND = """
import socket, sys
n, port = int(sys.argv[1]), int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(n):
    s.sendto(b"x", ("127.0.0.1", port))
"""


def no_socket(metrics) -> float:
    return sum(samples(metrics, "netstack_skb_drops_total", reason="NO_SOCKET").values())


def test_datagrams_to_closed_port_count_as_no_socket(backend_env):  # noqa: F811
    import sys

    backend, env = backend_env
    with (
        Netns("ebd") as ns,
        Exporter(
            "--collector.disable-defaults",
            "--collector.ebpf_drops",
            f"--collector.ebpf_drops.backend={backend}",
            env=env,
        ) as exporter,
    ):
        before = no_socket(wait_success(exporter, "ebpf_drops"))
        # a fresh namespace: nothing listens on any port
        ns.exec(sys.executable, "-c", SEND, str(N), "9")
        after = no_socket(exporter.scrape())
        # none lost, none counted twice; the tracepoint is global, so another test's datagram to
        # a closed port on this host may add one or two
        assert N <= after - before <= N + 10, (before, after)
        metrics = exporter.scrape()
        assert value(metrics, "netstack_collector_available", collector="ebpf_drops") == 1


def test_all_reasons_exports_the_kernels_whole_table(backend_env):  # noqa: F811
    backend, env = backend_env
    with Exporter(
        "--collector.disable-defaults",
        "--collector.ebpf_drops",
        f"--collector.ebpf_drops.backend={backend}",
        "--collector.ebpf_drops.all-reasons",
        env=env,
    ) as exporter:
        metrics = wait_success(exporter, "ebpf_drops")
        reasons = {dict(k[1])["reason"] for k in samples(metrics, "netstack_skb_drops_total")}
        assert {"NO_SOCKET", "NOT_SPECIFIED", "TCP_CSUM"} <= reasons
        assert len(reasons) > 60


def test_collector_direct_and_close_detaches(backend_env):  # noqa: F811
    import socket

    backend, _ = backend_env
    collector = EbpfDrops(Context(options={"all-reasons": False, "backend": backend}))
    collector.probe()
    collector.start()
    try:
        assert collector.load.wait(30)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(b"x", ("127.0.0.1", 9))
        [family] = list(collector.collect())
        assert any(s.labels["reason"] == "NO_SOCKET" and s.value >= 1 for s in family.samples)
    finally:
        collector.close()
    with pytest.raises(SourceUnavailable, match="closed"):  # never read after close
        list(collector.collect())
