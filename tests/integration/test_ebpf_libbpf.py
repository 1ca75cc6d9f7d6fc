"""The libbpf backend on the real kernel (root): the precompiled objects load without kernel BTF,
a BTF file given with btf-path is used for CO-RE relocations, they give the same metrics as bcc,
and every failure names its cause (no BTF, a bad BTF file, a program that cannot attach, a
verifier rejection, seccomp denying bpf(), missing capabilities)."""

from __future__ import annotations

import contextlib
import ctypes.util
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from collectors.ebpf_drops import EbpfDrops
from collectors.ebpf_libbpf import LibbpfLoader, core_relocations, object_path
from collectors.ebpf_softirq import EbpfSoftirq
from exporter.contract import Context, SourceUnavailable
from tests.helpers import ROOT, Exporter, Netns, need, need_tool, samples, value
from tests.integration.test_ebpf_loader import core_environment, ebpf_env, wait_success  # noqa: F401

SEND = (
    "import socket, sys\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
    "for _ in range(int(sys.argv[1])):\n    s.sendto(b'x', ('127.0.0.1', 9))\n"
)
HEADERS = '#include "vmlinux.h"\n#include <bpf/bpf_helpers.h>\n#include <bpf/bpf_tracing.h>\n'


@pytest.fixture(scope="module")
def core_env():
    with core_environment() as env:
        yield env


def bpf_fds() -> int:
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            n += target.startswith("anon_inode:bpf")
    return n


def compile_object(tmp_path: Path, name: str, body: str) -> Path:
    """A test program compiled like the package's (clang -target bpf against vmlinux.h)."""
    clang = need_tool("clang", "clang")
    bpftool = shutil.which("bpftool") or "/usr/sbin/bpftool"
    need(os.path.exists(bpftool), "needs bpftool (Debian package bpftool)")
    header = tmp_path / "vmlinux.h"
    if not header.exists():
        with open(header, "w") as f:
            subprocess.run(
                [bpftool, "btf", "dump", "file", "/sys/kernel/btf/vmlinux", "format", "c"],
                stdout=f,
                check=True,
            )
    src = tmp_path / f"{name}.bpf.c"
    src.write_text(HEADERS + body + '\nchar LICENSE[] SEC("license") = "GPL";\n')
    obj = tmp_path / f"{name}.bpf.o"
    subprocess.run(
        [
            clang,
            "-target",
            "bpf",
            "-D__TARGET_ARCH_x86",
            "-O2",
            "-g",
            "-I",
            str(tmp_path),
            "-c",
            str(src),
            "-o",
            str(obj),
        ],
        check=True,
        capture_output=True,
    )
    return obj


def no_socket(metrics) -> float:
    return sum(samples(metrics, "netstack_skb_drops_total", reason="NO_SOCKET").values())


def test_objects_load_and_count_without_kernel_btf(core_env):
    """/sys/kernel/btf hidden (a tmpfs over it in a private mount namespace): the objects carry
    no CO-RE relocation, so libbpf needs no kernel BTF and a kernel without it runs them."""
    need_tool("unshare", "util-linux")
    for name in ("softirq", "drops"):
        assert core_relocations(Path(object_path(name)).read_bytes()) == 0, name
    script = """
import os, socket
from collectors.ebpf_libbpf import LibbpfLoader
assert not os.path.exists("/sys/kernel/btf/vmlinux")
p = LibbpfLoader().load("drops", {}, {})
p.attach_tracepoint("skb", "kfree_skb", "tracepoint__skb__kfree_skb")
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(100):
    s.sendto(b"x", ("127.0.0.1", 9))
print(sum(p.read_map("drops").values()))
p.close()
"""
    with Netns("ebc") as ns:
        out = subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                ns.name,
                "unshare",
                "-m",
                "sh",
                "-c",
                f"mount -t tmpfs none /sys/kernel/btf && exec {sys.executable} -c '{script}'",
            ],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) >= 100


# A drops program that reads a kernel struct field: clang emits a CO-RE relocation for it, so
# libbpf needs BTF, the kernel's or the btf-path file, to load it.
CORE_READ_DROPS = """
#include <bpf/bpf_core_read.h>
struct { __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY); __uint(max_entries, 256);
         __type(key, __u32); __type(value, __u64); } drops SEC(".maps");
SEC("raw_tp/kfree_skb")
int BPF_PROG(tracepoint__skb__kfree_skb, struct sk_buff *skb, void *location, unsigned int reason)
{
    __u32 key = reason;
    if (BPF_CORE_READ(skb, len) == 0)
        return 0;
    __u64 *count = bpf_map_lookup_elem(&drops, &key);
    if (count)
        *count += 1;
    return 0;
}
"""

HIDDEN_BTF_SCRIPT = """
import os, socket, sys
from collectors.ebpf_libbpf import LibbpfLoader, core_relocations
from exporter.contract import SourceUnavailable
objects, copy, garbage = sys.argv[1:4]
assert not os.path.exists("/sys/kernel/btf/vmlinux")
assert core_relocations(open(objects + "/drops.bpf.o", "rb").read()) > 0
for path in ("", garbage):
    try:
        LibbpfLoader(objects, btf_path=path).check("drops")
        print("no failure for", repr(path))
    except SourceUnavailable as e:
        print(e)
loader = LibbpfLoader(objects, btf_path=copy)
loader.check("drops")
p = loader.load("drops", {}, {})
p.attach_tracepoint("skb", "kfree_skb", "tracepoint__skb__kfree_skb")
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(100):
    s.sendto(b"x", ("127.0.0.1", 9))
print(sum(p.read_map("drops").values()))
p.close()
"""


def test_btf_path_relocates_without_kernel_btf(core_env, tmp_path):
    """An object with a CO-RE relocation, /sys/kernel/btf hidden: without btf-path the reason
    says "no BTF"; a garbage file is named; a copy of the kernel's BTF given as btf-path (as a
    BTFHub file would be) is what libbpf relocates against, and the program loads and counts."""
    need_tool("unshare", "util-linux")
    compile_object(tmp_path, "drops", CORE_READ_DROPS)
    copy, garbage = tmp_path / "vmlinux.btf", tmp_path / "garbage.btf"
    shutil.copy("/sys/kernel/btf/vmlinux", copy)
    garbage.write_bytes(os.urandom(4096))
    with Netns("ebt") as ns:
        out = subprocess.run(
            ["ip", "netns", "exec", ns.name, "unshare", "-m", "sh", "-c"]
            + [
                'mount -t tmpfs none /sys/kernel/btf && exec "$0" -c "$1" "$2" "$3" "$4"',
                sys.executable,
                HIDDEN_BTF_SCRIPT,
                str(tmp_path),
                str(copy),
                str(garbage),
            ],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert out.returncode == 0, out.stderr
    no_btf, bad_file, counted = out.stdout.splitlines()
    assert no_btf.startswith("no BTF: drops.bpf.o has CO-RE relocations and this kernel has no ")
    assert "btf-path" in no_btf
    assert bad_file.startswith(f"BTF file {garbage} (btf-path) cannot be used: "), bad_file
    assert int(counted) >= 100  # the tracepoint is global: other jobs' drops count too


def test_btf_path_given_to_both_collectors(core_env, tmp_path):
    """The exporter with a copy of the kernel's BTF as btf-path: both collectors load and count;
    a garbage file makes each collector unavailable with a reason naming the file."""
    copy, garbage = tmp_path / "vmlinux.btf", tmp_path / "garbage.btf"
    shutil.copy("/sys/kernel/btf/vmlinux", copy)
    garbage.write_bytes(b"not BTF\n" * 100)
    collectors = ("ebpf_drops", "ebpf_softirq")

    def args(btf: Path) -> list[str]:
        return ["--collector.disable-defaults"] + [
            a
            for c in collectors
            for a in (
                f"--collector.{c}",
                f"--collector.{c}.backend=libbpf",
                f"--collector.{c}.btf-path={btf}",
            )
        ]

    with Netns("ebp") as ns, Exporter(*args(copy)) as exporter:
        for c in collectors:
            wait_success(exporter, c)
        before = no_socket(exporter.scrape())
        ns.exec(sys.executable, "-c", SEND, "1000")
        assert no_socket(exporter.scrape()) - before >= 1000
    reason = f"BTF file {garbage} (btf-path) cannot be used"
    with Exporter(*args(garbage)) as exporter:
        metrics = exporter.scrape()
        for c in collectors:
            assert value(metrics, "netstack_scrape_collector_success", collector=c) == 0
        lines = exporter.log().splitlines()
        for c in collectors:
            assert any(f"collector={c}" in line and reason in line for line in lines), exporter.log()


def test_btf_path_that_does_not_exist_is_refused_at_start():
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "exporter",
            "--collector.ebpf_drops",
            "--collector.ebpf_drops.btf-path=/nonexistent",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "netstack-exporter: error: --collector.ebpf_drops.btf-path: no such file '/nonexistent' "
        "(a BTF file: a vmlinux with .BTF or a BTFHub .btf file)"
    ]


def test_program_attach_read_close_releases_everything(core_env):
    before = bpf_fds()
    program = LibbpfLoader().load(
        "softirq", {"VEC_MASK": 0xFFFF, "NR_VECS": 10}, {"hist": 2 * 10 * 65, "sums": 2 * 10}
    )
    for event in ("softirq_raise", "softirq_entry", "softirq_exit"):
        program.attach_tracepoint("irq", event, f"tracepoint__irq__{event}")
    assert bpf_fds() > before
    time.sleep(0.3)  # the tick's TIMER softirq runs on every CPU meanwhile
    summed, per_cpu = program.read_map("hist"), program.read_map("hist", per_cpu=True)
    # the per-CPU read comes second, so buckets first hit in between show up only there
    assert summed and set(summed) <= set(per_cpu)
    assert all(sum(per_cpu[k].values()) >= summed[k] for k in summed)  # counting goes on
    assert max(summed) < 2 * 10 * 65  # the map was sized for NR_VECS rows
    # key by key (kernels before 5.6) reads what the batch lookup read, and more by now
    program._maps["hist"].batch = False  # type: ignore[attr-defined]
    one_by_one = program.read_map("hist")
    assert set(summed) <= set(one_by_one)
    assert all(one_by_one[k] >= summed[k] for k in summed)
    program.close()
    program.close()  # twice is harmless
    assert bpf_fds() == before
    with pytest.raises(SourceUnavailable, match="closed"):
        program.read_map("hist")


def test_metrics_identical_across_backends(ebpf_env, core_env):  # noqa: F811
    """Both backends at once, same traffic: the same series, the same NO_SOCKET count."""
    args = (
        "--collector.disable-defaults",
        "--collector.ebpf_drops",
        "--collector.ebpf_softirq",
        "--collector.ebpf_drops.all-reasons",
    )
    n = 3000
    with (
        Netns("ebi") as ns,
        Exporter(
            *args,
            "--collector.ebpf_drops.backend=libbpf",
            "--collector.ebpf_softirq.backend=libbpf",
            env=ebpf_env,
        ) as core,
        Exporter(
            *args, "--collector.ebpf_drops.backend=bcc", "--collector.ebpf_softirq.backend=bcc", env=ebpf_env
        ) as bcc,
    ):
        for exporter in (core, bcc):
            wait_success(exporter, "ebpf_drops")
            wait_success(exporter, "ebpf_softirq")
        before = {e: no_socket(e.scrape()) for e in (core, bcc)}
        ns.exec(sys.executable, "-c", SEND, str(n))
        after = {e: e.scrape() for e in (core, bcc)}
    ebpf_series = {
        e: {k for k in m if k[0].startswith(("netstack_skb_drops", "netstack_softirq_"))}
        for e, m in after.items()
    }
    assert ebpf_series[core] == ebpf_series[bcc]
    assert len(ebpf_series[core]) > 100
    counted = {e: no_socket(after[e]) - before[e] for e in (core, bcc)}
    assert n <= counted[core] <= n + 10 and n <= counted[bcc] <= n + 10, counted


def test_a_program_that_cannot_attach_is_reported_by_its_collector(core_env, tmp_path):
    """drops.bpf.o replaced by one that reads a fifth kfree_skb argument: the kernel refuses to
    attach it (EINVAL), exactly what the real object meets on a kernel before 5.17. ebpf_drops
    is unavailable with that reason; ebpf_softirq, from the same directory, works."""
    compile_object(
        tmp_path,
        "drops",
        """
struct { __uint(type, BPF_MAP_TYPE_PERCPU_HASH); __uint(max_entries, 16);
         __type(key, __u32); __type(value, __u64); } drops SEC(".maps");
SEC("raw_tp/kfree_skb")
int tracepoint__skb__kfree_skb(__u64 *ctx)
{
    __u32 key = ctx[5];
    __u64 one = 1;
    bpf_map_update_elem(&drops, &key, &one, BPF_ANY);
    return 0;
}
""",
    )
    shutil.copy(object_path("softirq"), tmp_path / "softirq.bpf.o")
    loader = LibbpfLoader(str(tmp_path))
    drops = EbpfDrops(Context(options={}), loader)
    softirq = EbpfSoftirq(Context(options={}), loader)
    try:
        for c in (drops, softirq):
            c.probe()
            c.start()
            assert c.load.wait(10)
        with pytest.raises(SourceUnavailable) as e:
            drops.program()
        assert (
            "cannot attach tracepoint__skb__kfree_skb to raw tracepoint kfree_skb (skb:kfree_skb): EINVAL"
        ) in str(e.value)
        assert "arguments the tracepoint does not have" in str(e.value)
        with pytest.raises(SourceUnavailable, match="EINVAL"):  # and the next probe says so too
            drops.probe()
        wait, _service = list(softirq.collect())
        assert wait.name == "netstack_softirq_wait_seconds"
    finally:
        drops.close()
        softirq.close()


def test_verifier_rejection_names_program_and_logs_its_last_lines(core_env, tmp_path, caplog):
    compile_object(
        tmp_path,
        "drops",
        """
struct { __uint(type, BPF_MAP_TYPE_PERCPU_HASH); __uint(max_entries, 16);
         __type(key, __u32); __type(value, __u64); } drops SEC(".maps");
SEC("raw_tp/kfree_skb")
int tracepoint__skb__kfree_skb(__u64 *ctx)
{
    __u32 key = 0;
    __u64 *count = bpf_map_lookup_elem(&drops, &key);
    *count += 1;  /* no NULL check: the verifier refuses this */
    return 0;
}
""",
    )
    before = bpf_fds()
    with caplog.at_level(logging.DEBUG, logger="netstack.ebpf"), pytest.raises(SourceUnavailable) as e:
        LibbpfLoader(str(tmp_path)).load("drops", {}, {})
    reason = str(e.value)
    assert reason.startswith(
        "the kernel's verifier rejected drops.bpf.o program tracepoint__skb__kfree_skb (EACCES"
    ), reason
    assert reason.endswith("invalid mem access 'map_value_or_null' (its last lines at debug log level)"), (
        reason
    )
    assert "\n" not in reason
    lines = [r for r in caplog.records if r.getMessage() == "verifier"]
    assert 1 <= len(lines) <= 8
    assert bpf_fds() == before  # the half-loaded object was closed


# A seccomp filter like a container runtime's default profile: bpf() fails with EPERM.
SECCOMP_EXEC = """
import ctypes, errno, os, sys
lib = ctypes.CDLL("libseccomp.so.2")
lib.seccomp_init.restype = ctypes.c_void_p
ctx = lib.seccomp_init(ctypes.c_uint32(0x7FFF0000))                  # SCMP_ACT_ALLOW
nr = lib.seccomp_syscall_resolve_name(b"bpf")
assert lib.seccomp_rule_add(ctypes.c_void_p(ctx), ctypes.c_uint32(0x00050000 | errno.EPERM), nr, 0) == 0
assert lib.seccomp_load(ctypes.c_void_p(ctx)) == 0
os.execv(sys.argv[1], sys.argv[1:])
"""


@pytest.mark.parametrize("backend", ["libbpf", "bcc"])
def test_seccomp_denying_bpf_is_named(backend, request, core_env):
    need(ctypes.util.find_library("seccomp") is not None, "needs libseccomp2")
    env = request.getfixturevalue("ebpf_env") if backend == "bcc" else core_env
    exporter = Exporter(
        "--collector.disable-defaults",
        "--collector.ebpf_drops",
        "--collector.ebpf_softirq",
        f"--collector.ebpf_drops.backend={backend}",
        f"--collector.ebpf_softirq.backend={backend}",
        env=env,
    )
    exporter.args = [sys.executable, "-c", SECCOMP_EXEC, *exporter.args]
    with exporter:
        metrics = exporter.scrape()
        for collector in ("ebpf_drops", "ebpf_softirq"):
            assert value(metrics, "netstack_collector_available", collector=collector) == 0
        with exporter.get("/") as r:
            page = r.read().decode()
        log = exporter.log()
    assert "bpf() denied (EPERM): CAP_BPF and CAP_PERFMON are held but a seccomp filter denies bpf()" in page
    assert "Failed to compile" not in page and "Traceback" not in log


def test_cap_bpf_and_cap_perfmon_are_enough(core_env):
    """uid 0 with every capability but CAP_BPF and CAP_PERFMON dropped: the libbpf backend
    loads, attaches and counts (raw tracepoints need no perf_event_open, no CAP_SYS_ADMIN)."""
    need_tool("setpriv", "util-linux")
    exporter = Exporter(
        "--collector.disable-defaults",
        "--collector.ebpf_drops",
        "--collector.ebpf_drops.backend=libbpf",
        env=core_env,
    )
    exporter.args = ["setpriv", "--bounding-set=-all,+bpf,+perfmon", "--inh-caps=-all", *exporter.args]
    with Netns("ebp") as ns, exporter:
        before = no_socket(wait_success(exporter, "ebpf_drops"))
        status = Path(f"/proc/{exporter.proc.pid}/status").read_text()
        cap_eff = int(next(line for line in status.splitlines() if line.startswith("CapEff:")).split()[1], 16)
        assert cap_eff == (1 << 39) | (1 << 38), hex(cap_eff)
        ns.exec(sys.executable, "-c", SEND, "500")
        assert 500 <= no_socket(exporter.scrape()) - before <= 510


def test_settings_are_checked_against_the_object(core_env):
    with pytest.raises(SourceUnavailable, match=r"softirq\.bpf\.o has no setting NR_CPUS"):
        LibbpfLoader().load("softirq", {"VEC_MASK": 1, "NR_CPUS": 2}, {})
    with pytest.raises(SourceUnavailable, match=r"drops\.bpf\.o has no \.rodata settings"):
        LibbpfLoader().load("drops", {"MAX_REASONS": 1024}, {})
    with pytest.raises(SourceUnavailable, match=r"drops\.bpf\.o: cannot size map nope"):
        LibbpfLoader().load("drops", {}, {"nope": 4})


def test_libbpf_messages_still_ours_after_bcc_loaded(ebpf_env, core_env, tmp_path):  # noqa: F811
    """Debian's bcc links the same libbpf.so.1 and installs its own print callback when it loads
    a program: a libbpf load afterwards must still see libbpf's messages (the program's name)."""
    from collectors.ebpf_loader import BccLoader

    LibbpfLoader().load("drops", {}, {}).close()  # our callback installed first
    BccLoader().load_source("int noop(void *ctx) { return 0; }", {}).close()
    compile_object(
        tmp_path,
        "drops",
        """
struct { __uint(type, BPF_MAP_TYPE_PERCPU_HASH); __uint(max_entries, 16);
         __type(key, __u32); __type(value, __u64); } drops SEC(".maps");
SEC("raw_tp/kfree_skb")
int tracepoint__skb__kfree_skb(__u64 *ctx)
{
    __u32 key = 0;
    __u64 *count = bpf_map_lookup_elem(&drops, &key);
    *count += 1;
    return 0;
}
""",
    )
    with pytest.raises(SourceUnavailable, match=r"program tracepoint__skb__kfree_skb \(EACCES"):
        LibbpfLoader(str(tmp_path)).load("drops", {}, {})
