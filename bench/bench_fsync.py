"""Accuracy and cost of the fsync probe, against fio (and optionally etcd) on the same directory.

    sudo .venv/bin/python bench/bench_fsync.py [--dir /var/lib/netstack-exporter-bench]
                                               [--rounds 6] [--etcd]

Each round runs, in alternating order so that drift of a shared disk hits all sides alike:
  fio      fio --rw=write --ioengine=sync --fdatasync=1 --size=22m --bs=2300 (the usual etcd check)
  probe    as many probes as it takes to match fio's number of fdatasyncs (22 x 456 writes)
  overwrite the same probes without resetting the file's extents (the design alternative)
and prints p50/p99 of the fdatasync latency per round and pooled over all rounds (nearest rank,
fio's from its json+ latency bins), the share of syncs over 1 ms, and the ratios to fio.
Then the cost of one default probe (456 x 2300 B): CPU (getrusage), bytes written by the process
(/proc/self/io) and by the disk (/sys/dev/block/M:m/stat, whole device, includes the journal).
With --etcd: Debian's etcd on the same disk, a bounded put loop through its JSON gateway, and its
own etcd_disk_wal_fsync_duration_seconds next to the probe's histogram (same buckets).
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from collectors.fsync import PROBE_FILE, Histogram, find_mount, parse_mountinfo, run_probe
from tests.helpers import free_port, stop_process

WRITES, BLOCK = 456, 2300
FIO_SIZE = 22 * 1024 * 1024


def ms(seconds: float) -> str:
    return f"{seconds * 1000:8.3f}"


def weighted_quantiles(pairs: list[tuple[float, int]], qs=(0.5, 0.99)) -> dict[float, float]:
    """Nearest-rank quantiles of (value, count) pairs: the same definition the collector uses."""
    pairs = sorted(pairs)
    total = sum(c for _, c in pairs)
    out = {}
    for q in qs:
        rank, seen = max(1, math.ceil(q * total)), 0
        for v, c in pairs:
            seen += c
            if seen >= rank:
                out[q] = v
                break
    return out


def fio_round(directory: str) -> list[tuple[float, int]]:
    """fio's fdatasync latencies as (seconds, count) from its json+ bins (fio's bins are within
    about 1.6% of the true value: 64 bins per power of two)."""
    out = subprocess.run(
        [
            "fio",
            "--rw=write",
            "--ioengine=sync",
            "--fdatasync=1",
            f"--size={FIO_SIZE}",
            "--bs=2300",
            f"--directory={directory}",
            "--name=etcd",
            "--output-format=json+",
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    ).stdout
    bins = json.loads(out[out.index("{") :])["jobs"][0]["sync"]["lat_ns"]["bins"]
    for f in Path(directory).glob("etcd.*"):
        f.unlink()
    return [(int(ns) / 1e9, n) for ns, n in bins.items()]


def probe_round(directory: str, probes: int, reset_extents: bool) -> list[tuple[float, int]]:
    block = os.urandom(BLOCK)
    durations: list[float] = []
    for _ in range(probes):
        result = run_probe(directory, WRITES, block, reset_extents=reset_extents)
        if result.error:
            raise SystemExit(f"probe failed: {result.error}")
        durations += result.durations
    return [(d, 1) for d in durations]


def disk_stat_path(directory: str) -> Path | None:
    mounts = parse_mountinfo(Path("/proc/self/mountinfo").read_text())
    mount = find_mount(mounts, os.path.realpath(directory))
    path = Path(f"/sys/dev/block/{mount.major}:{mount.minor}/stat") if mount else None
    return path if path and path.exists() else None


def sectors_written(stat: Path | None) -> int:
    return int(stat.read_text().split()[6]) if stat else 0  # field 7: sectors written


def proc_io() -> dict[str, int]:
    return {
        k: int(v) for k, v in (line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
    }


def probe_cost(directory: str, n: int = 20) -> dict[str, float]:
    """Median over n default probes of what one probe costs."""
    block, stat = os.urandom(BLOCK), disk_stat_path(directory)
    run_probe(directory, WRITES, block)  # allocate outside the measurement
    cpu, wall, wbytes, disk = [], [], [], []
    for _ in range(n):
        r0, io0, d0 = resource.getrusage(resource.RUSAGE_SELF), proc_io(), sectors_written(stat)
        t0 = time.perf_counter()
        run_probe(directory, WRITES, block)
        t1 = time.perf_counter()
        r1, io1, d1 = resource.getrusage(resource.RUSAGE_SELF), proc_io(), sectors_written(stat)
        cpu.append((r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime))
        wall.append(t1 - t0)
        wbytes.append(io1["write_bytes"] - io0["write_bytes"])
        disk.append((d1 - d0) * 512)
    return {
        "cpu_s": statistics.median(cpu),
        "wall_s": statistics.median(wall),
        "proc_write_bytes": statistics.median(wbytes),
        "disk_write_bytes": statistics.median(disk),
        "disk_measured": stat is not None,
    }


# --- etcd ------------------------------------------------------------------------------------


def post(url: str, body: dict) -> dict:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def etcd_histogram(url: str) -> dict[str, float]:
    """Cumulative le -> count of etcd_disk_wal_fsync_duration_seconds from its /metrics."""
    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("etcd_disk_wal_fsync_duration_seconds_bucket{"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            out[le] = float(line.rsplit(" ", 1)[1])
    return out


def etcd_compare(directory: str, puts: int, time_limit: float) -> None:
    etcd = shutil.which("etcd")
    if not etcd:
        print("etcd: not installed (Debian etcd-server); skipped")
        return
    data = tempfile.mkdtemp(prefix="etcd-bench-", dir=directory)
    client, peer = free_port(), free_port()
    url = f"http://127.0.0.1:{client}"
    log = open(os.path.join(directory, "etcd-bench.log"), "w")
    proc = subprocess.Popen(
        [
            etcd,
            "--name=bench",
            f"--data-dir={data}",
            f"--listen-client-urls={url}",
            f"--advertise-client-urls={url}",
            f"--listen-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-cluster=bench=http://127.0.0.1:{peer}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(url + "/health", timeout=1) as r:
                    if json.loads(r.read()).get("health") == "true":
                        break
            except OSError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit("etcd did not become healthy; see etcd-bench.log")
            time.sleep(0.1)
        before = etcd_histogram(url)
        value = base64.b64encode(os.urandom(256)).decode()
        done, start = 0, time.monotonic()
        while done < puts and time.monotonic() - start < time_limit:  # bounded in count and time
            key = base64.b64encode(f"bench/{done % 100}".encode()).decode()
            post(url + "/v3/kv/put", {"key": key, "value": value})
            done += 1
        elapsed = time.monotonic() - start
        after = etcd_histogram(url)
    finally:
        stop_process(proc, 10)
        log.close()
        shutil.rmtree(data, ignore_errors=True)
        os.unlink(os.path.join(directory, "etcd-bench.log"))

    etcd_counts = {le: after[le] - before.get(le, 0.0) for le in after}
    syncs = etcd_counts["+Inf"]
    hist, block = Histogram(), os.urandom(BLOCK)
    probes = max(1, math.ceil(syncs / WRITES))
    for _ in range(probes):
        for d in run_probe(directory, WRITES, block).durations:
            hist.observe(d)
    ours = dict(hist.cumulative())
    print(f"\netcd {done} puts in {elapsed:.1f}s -> {syncs:.0f} WAL fsyncs; probe: {hist.count} fdatasyncs")
    print(f"{'le (s)':>8} {'etcd share':>11} {'probe share':>12}")
    for le in ("0.001", "0.002", "0.004", "0.008", "0.016", "0.032"):
        print(f"{le:>8} {etcd_counts[le] / syncs:11.4f} {ours[le] / hist.count:12.4f}")
    print(
        f"probe sub-ms detail: share <= 0.25 ms {ours['0.00025'] / hist.count:.4f}, "
        f"<= 0.5 ms {ours['0.0005'] / hist.count:.4f}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default="/var/lib/netstack-exporter-bench", help="directory on the disk to test")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--etcd", action="store_true", help="also compare with Debian's etcd")
    ap.add_argument("--etcd-puts", type=int, default=5000)
    ap.add_argument("--etcd-seconds", type=float, default=60.0)
    args = ap.parse_args()
    if not shutil.which("fio"):
        raise SystemExit("needs fio (Debian package fio)")
    created = not os.path.isdir(args.dir)
    os.makedirs(args.dir, exist_ok=True)
    try:
        probes = math.ceil(FIO_SIZE / BLOCK / WRITES)
        print(
            f"dir={args.dir} rounds={args.rounds} fio=22m/2300B; probe={probes}x{WRITES}x{BLOCK}B per round"
        )
        sides = ("fio", "probe", "overwrite")
        print(f"{'round':>6} " + " ".join(f"{w + ' p50':>14} {'p99':>8}" for w in sides) + "   (ms)")
        pooled: dict[str, list[tuple[float, int]]] = {w: [] for w in sides}
        for i in range(args.rounds):
            order = sides if i % 2 == 0 else tuple(reversed(sides))
            res = {}
            for what in order:
                res[what] = (
                    fio_round(args.dir)
                    if what == "fio"
                    else probe_round(args.dir, probes, reset_extents=(what == "probe"))
                )
                pooled[what] += res[what]
            print(
                f"{i + 1:>6} "
                + " ".join(
                    f"{ms(q[0.5]):>14} {ms(q[0.99])}" for q in (weighted_quantiles(res[w]) for w in sides)
                )
            )
        q = {w: weighted_quantiles(pooled[w]) for w in sides}
        print(f"{'pooled':>6} " + " ".join(f"{ms(q[w][0.5]):>14} {ms(q[w][0.99])}" for w in sides))
        for w in sides:
            n = sum(c for _, c in pooled[w])
            slow = sum(c for v, c in pooled[w] if v > 0.001)
            ratio = (
                ""
                if w == "fio"
                else f"  ratio to fio: p50 {q[w][0.5] / q['fio'][0.5]:.2f}, p99 {q[w][0.99] / q['fio'][0.99]:.2f}"
            )
            print(f"{w:>9}: {n} fdatasyncs, {100 * slow / n:.2f}% over 1 ms{ratio}")

        cost = probe_cost(args.dir)
        print(
            f"\none default probe ({WRITES} x {BLOCK} B), median of 20: wall {cost['wall_s'] * 1000:.1f} ms, "
            f"CPU {cost['cpu_s'] * 1000:.1f} ms, process write_bytes {cost['proc_write_bytes'] / 1024:.0f} KiB, "
            + (
                f"disk sectors written {cost['disk_write_bytes'] / 1024:.0f} KiB (whole device, incl. journal)"
                if cost["disk_measured"]
                else "disk stat not available"
            )
        )
        if args.etcd:
            etcd_compare(args.dir, args.etcd_puts, args.etcd_seconds)
    finally:
        probe_file = os.path.join(args.dir, PROBE_FILE)
        if os.path.exists(probe_file):
            os.unlink(probe_file)
        if created:
            shutil.rmtree(args.dir, ignore_errors=True)


if __name__ == "__main__":
    main()
