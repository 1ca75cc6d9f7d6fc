"""IPVS collector at kube-proxy scale: this exporter vs node_exporter on the same /proc/net/ip_vs.

Generates a procfs tree with N services x B backends (default 5,000 x 3) in the kernel's printf
formats, starts both exporters on it (only their ipvs collector), scrapes one, then the other, and
prints median scrape time, series, bytes and RSS, then where this exporter's time goes
(parse, building families, serialising with the exporter's encoder) and the netlink decoder
against pyroute2's. Other load on the machine moves these numbers; compare within one run.

    .venv/bin/python bench/bench_ipvs.py [--services 5000] [--backends 3] [--scrapes 30]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.helpers import free_port, stop_process  # noqa: E402

NODE_EXPORTER = "/usr/bin/prometheus-node-exporter"


def ip_vs_text(services: int, backends: int) -> str:
    """/proc/net/ip_vs as ip_vs_info_seq_show() prints it."""
    out = [
        "IP Virtual Server version 1.2.1 (size=4096)\n",
        "Prot LocalAddress:Port Scheduler Flags\n",
        "  -> RemoteAddress:Port Forward Weight ActiveConn InActConn\n",
    ]
    for i in range(services):
        proto = "UDP" if i % 10 == 9 else "TCP"
        vip = 0x0A600000 + i  # 10.96.0.0/12 service range
        out.append("{}  {:08X}:{:04X} {} {} \n".format(proto, vip, 80 + i % 3, "rr", ""))
        for b in range(backends):
            pod = 0x0AF40000 + i * backends + b  # 10.244.0.0/16 pod range
            out.append(
                "  -> %08X:%04X      %-7s %-6d %-10d %-10d\n"  # noqa: UP031 (the kernel's own format)
                % (pod, 8080, "Masq", 1, (i * 7 + b) % 50, (i * 3 + b) % 20)
            )
    return "".join(out)


def ip_vs_stats_text() -> str:
    return (
        "   Total Incoming Outgoing         Incoming         Outgoing\n"
        "   Conns  Packets  Packets            Bytes            Bytes\n"
        f"{123456:8X} {9876543:8X} {8765432:8X} {123456789012:16X} {98765432101:16X}\n\n"
        + " Conns/s   Pkts/s   Pkts/s          Bytes/s          Bytes/s\n"
        f"{1:8X} {2:8X} {3:8X} {4:16X} {5:16X}\n"
    )


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{url}: exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{url}: not ready after {timeout}s")


def scrape(url: str) -> tuple[float, bytes]:
    start = time.perf_counter()
    with urllib.request.urlopen(url, timeout=60) as r:
        body = r.read()
    return time.perf_counter() - start, body


def rss_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) in KiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        fields[key] = rest.strip()
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def collector_seconds(body: bytes) -> float:
    key = b'netstack_scrape_collector_duration_seconds{collector="ipvs"} '
    start = body.index(key) + len(key)
    return float(body[start : body.index(b"\n", start)])


def series(body: bytes, prefix: bytes) -> int:
    return sum(1 for line in body.split(b"\n") if line.startswith(prefix))


def start_ours(tree: str, port: int) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "exporter",
            "--collector.disable-defaults",
            "--collector.ipvs",
            "--collector.ipvs.source=procfs",
            f"--path.procfs={tree}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def baseline_rss(empty_tree: str, scrapes: int) -> int:
    """RSS (KiB) of this exporter serving an empty IPVS table: the process's own floor."""
    port = free_port()
    proc = start_ours(empty_tree, port)
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        wait_ready(url, proc)
        for _ in range(scrapes):
            scrape(url)
        return rss_kib(proc.pid)[0]
    finally:
        stop_process(proc)


def compare(tree: str, scrapes: int) -> None:
    ours_port, node_port = free_port(), free_port()
    ours = start_ours(tree, ours_port)
    node = subprocess.Popen(
        [
            NODE_EXPORTER,
            "--collector.disable-defaults",
            "--collector.ipvs",
            f"--path.procfs={tree}",
            f"--web.listen-address=127.0.0.1:{node_port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        targets = {
            "netstack-exporter": (f"http://127.0.0.1:{ours_port}/metrics", ours, b"netstack_ipvs"),
            "node_exporter": (f"http://127.0.0.1:{node_port}/metrics", node, b"node_ipvs"),
        }
        for url, proc, _ in targets.values():
            wait_ready(url, proc)
            for _ in range(3):  # warm up
                scrape(url)
        # One exporter at a time: on a 2-core machine, node_exporter's background GC after each of
        # its scrapes would otherwise eat into the other's scrape.
        times: dict[str, list[float]] = {name: [] for name in targets}
        bodies: dict[str, bytes] = {}
        own: list[float] = []  # the ipvs collector's share, as the exporter reports it
        for name, (url, _, _) in targets.items():
            time.sleep(1.0)
            for _ in range(scrapes):
                seconds, bodies[name] = scrape(url)
                times[name].append(seconds)
                if name == "netstack-exporter":
                    own.append(collector_seconds(bodies[name]))
        print(
            f"{'':18} {'median s':>9} {'min s':>7} {'p90 s':>7} {'series':>7} {'ipvs series':>11} "
            f"{'bytes':>9} {'RSS MiB':>8} {'peak MiB':>8}"
        )
        rows = {}
        for name, (_url, proc, prefix) in targets.items():
            rss, hwm = rss_kib(proc.pid)
            t = sorted(times[name])
            rows[name] = (statistics.median(t), rss, hwm)
            body = bodies[name]
            total = sum(1 for line in body.split(b"\n") if line and not line.startswith(b"#"))
            print(
                f"{name:18} {statistics.median(t):9.4f} {t[0]:7.4f} {t[int(len(t) * 0.9) - 1]:7.4f} "
                f"{total:7d} {series(body, prefix):11d} {len(body):9d} {rss / 1024:8.1f} "
                f"{hwm / 1024:8.1f}"
            )
        print(
            f"netstack-exporter: median duration of the ipvs collection itself "
            f"{statistics.median(own) * 1e3:.1f} ms (netstack_scrape_collector_duration_seconds)"
        )
        (ours_t, ours_rss, ours_hwm), (node_t, node_rss, node_hwm) = (
            rows["netstack-exporter"],
            rows["node_exporter"],
        )
        print(
            f"speed-up {node_t / ours_t:.1f}x (target >= 10x); RSS ratio {ours_rss / node_rss:.2f}, "
            f"peak RSS ratio {ours_hwm / node_hwm:.2f} (target <= 0.5)"
        )
    finally:
        stop_process(ours)
        stop_process(node)


def breakdown(tree: str, repeats: int) -> None:
    """Where one collection's time goes, in this process (medians)."""
    from collectors import ipvs
    from exporter.contract import Context, Paths
    from exporter.exposition import encode_text

    collector = ipvs.IpvsCollector(Context(paths=Paths(procfs=tree), options={"source": "procfs"}))
    collector.probe()
    text = Path(tree, "net/ip_vs").read_text()

    parse, build, encode = [], [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        table = collector.read_table()
        t1 = time.perf_counter()
        families = ipvs.build_metrics(table, False, ipvs.DEFAULT_MAX_SERIES)
        t2 = time.perf_counter()
        encode_text(families)
        t3 = time.perf_counter()
        parse.append(t1 - t0)
        build.append(t2 - t1)
        encode.append(t3 - t2)
    parse_only = statistics.median(_timed(lambda: ipvs.parse_ip_vs(text), repeats))
    print(
        f"in-process medians over {repeats}: read+parse {statistics.median(parse) * 1e3:.1f} ms "
        f"(parse_ip_vs without its service-line cache: {parse_only * 1e3:.1f} ms), build families "
        f"{statistics.median(build) * 1e3:.1f} ms, exporter.exposition.encode_text "
        f"{statistics.median(encode) * 1e3:.1f} ms"
    )


def _timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def netlink_decoders(services: int, backends: int, repeats: int) -> None:
    """Decoding a service dump and the destination dumps: this module's walker vs pyroute2."""
    from pyroute2.netlink.generic.ipvs import ipvsmsg
    from pyroute2.netlink.marshal import Marshal

    from collectors import ipvs

    family = 0x23

    def message(cmd, nest, attrs):
        m = ipvsmsg()
        m["cmd"], m["version"] = cmd, 1
        m["header"]["type"], m["header"]["flags"] = family, 2
        m["attrs"] = [(nest, {"attrs": attrs})]
        m.encode()
        return bytes(m.data)

    counters = ("CONNS", "INPKTS", "OUTPKTS", "INBYTES", "OUTBYTES")
    stats = {"attrs": [(f"IPVS_STATS_ATTR_{n}", 1) for n in counters]}
    done = struct.pack("=IHHIIi", 20, 3, 2, 0, 0, 0)
    svc_msgs = [
        message(
            1,
            "IPVS_CMD_ATTR_SERVICE",
            [
                ("IPVS_SVC_ATTR_AF", 2),
                ("IPVS_SVC_ATTR_PROTOCOL", 6),
                ("IPVS_SVC_ATTR_ADDR", socket.inet_ntoa(struct.pack(">I", 0x0A600000 + i))),
                ("IPVS_SVC_ATTR_PORT", 80),
                ("IPVS_SVC_ATTR_SCHED_NAME", "rr"),
                ("IPVS_SVC_ATTR_FLAGS", {"flags": 2, "mask": 0xFFFFFFFF}),
                ("IPVS_SVC_ATTR_STATS", stats),
                ("IPVS_SVC_ATTR_STATS64", stats),
            ],
        )
        for i in range(services)
    ]
    dest_msg = message(
        5,
        "IPVS_CMD_ATTR_DEST",
        [
            ("IPVS_DEST_ATTR_ADDR", "10.244.0.1"),
            ("IPVS_DEST_ATTR_PORT", 8080),
            ("IPVS_DEST_ATTR_FWD_METHOD", 0),
            ("IPVS_DEST_ATTR_WEIGHT", 1),
            ("IPVS_DEST_ATTR_ACTIVE_CONNS", 3),
            ("IPVS_DEST_ATTR_INACT_CONNS", 1),
            ("IPVS_DEST_ATTR_STATS", stats),
            ("IPVS_DEST_ATTR_STATS64", stats),
            ("IPVS_DEST_ATTR_ADDR_FAMILY", 2),
        ],
    )
    svc_chunks = [b"".join(svc_msgs[i : i + 100]) for i in range(0, services, 100)] + [done]
    dest_chunk = [dest_msg * backends + done]

    def ours():
        found = ipvs.decode_services(svc_chunks, family)
        for svc in found:
            ipvs.decode_dests(dest_chunk, family, svc, want_dests=False)

    def theirs():
        marshal = Marshal()
        marshal.msg_map[family] = ipvsmsg
        for chunk in svc_chunks:
            for msg in marshal.parse(chunk):
                s = msg.get_attr("IPVS_CMD_ATTR_SERVICE")
                if s is None:
                    continue
                s.get_attr("IPVS_SVC_ATTR_ADDR")
                s.get_attr("IPVS_SVC_ATTR_STATS64").get_attr("IPVS_STATS_ATTR_CONNS")
                for d in marshal.parse(dest_chunk[0]):
                    dest = d.get_attr("IPVS_CMD_ATTR_DEST")
                    if dest is not None:
                        dest.get_attr("IPVS_DEST_ATTR_WEIGHT")

    ours_t = statistics.median(_timed(ours, repeats))
    theirs_t = statistics.median(_timed(theirs, 1))
    print(
        f"netlink decode of {services} service + {services * backends} destination messages: "
        f"collectors.ipvs {ours_t * 1e3:.0f} ms (median of {repeats}), pyroute2 nla classes "
        f"{theirs_t * 1e3:.0f} ms (1 run), {theirs_t / ours_t:.0f}x"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--services", type=int, default=5000)
    ap.add_argument("--backends", type=int, default=3)
    ap.add_argument("--scrapes", type=int, default=30)
    ap.add_argument("--skip-netlink", action="store_true", help="skip the decoder comparison")
    args = ap.parse_args()
    if not os.access(NODE_EXPORTER, os.X_OK):
        raise SystemExit(f"needs {NODE_EXPORTER} (Debian package prometheus-node-exporter)")
    with tempfile.TemporaryDirectory(prefix="bench-ipvs-") as tree:
        os.mkdir(os.path.join(tree, "net"))
        Path(tree, "net/ip_vs").write_text(ip_vs_text(args.services, args.backends))
        Path(tree, "net/ip_vs_stats").write_text(ip_vs_stats_text())
        size = os.path.getsize(os.path.join(tree, "net/ip_vs"))
        print(
            f"/proc/net/ip_vs: {args.services} services x {args.backends} backends, {size} bytes; "
            f"{args.scrapes} scrapes each, one exporter at a time"
        )
        empty = os.path.join(tree, "empty")
        os.makedirs(os.path.join(empty, "net"))
        Path(empty, "net/ip_vs").write_text(ip_vs_text(0, 0))
        Path(empty, "net/ip_vs_stats").write_text(ip_vs_stats_text())
        compare(tree, args.scrapes)
        floor = baseline_rss(empty, args.scrapes)
        print(f"netstack-exporter RSS with an empty IPVS table: {floor / 1024:.1f} MiB")
        breakdown(tree, max(5, args.scrapes // 3))
    if not args.skip_netlink:
        netlink_decoders(args.services, args.backends, 5)


if __name__ == "__main__":
    main()
