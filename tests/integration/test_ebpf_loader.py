"""The bcc backend on the real kernel (root): kernel header preparation, compile errors, the
unavailable paths through the real exporter. Also holds the shared setup the eBPF collector
integration modules import: tracefs mounted, and per backend what it needs (bcc importable and a
header tree; or libbpf1 and the CO-RE objects built by the package build)."""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from pathlib import Path

import pytest

from exporter.contract import SourceUnavailable
from tests.helpers import ROOT, Exporter, need, need_root, run, value

SCRIPT = ROOT / "scripts" / "kernel-headers.sh"
TRACEFS = "/sys/kernel/tracing"


@contextlib.contextmanager
def tracefs_mounted():
    """tracefs as bcc expects it; mounted here (and unmounted after) only if it was not."""
    need_root()
    if any(os.path.isdir(f"{p}/events") for p in ("/sys/kernel/debug/tracing", TRACEFS)):
        yield
        return
    run(["mount", "-t", "tracefs", "nodev", TRACEFS])
    try:
        yield
    finally:
        run(["umount", TRACEFS], check=False)


def need_bcc() -> None:
    try:
        import bcc  # noqa: F401

        ok = True
    except Exception:
        ok = False
    need(
        ok,
        "bcc not importable: apt-get install python3-bpfcc and link "
        "/usr/lib/python3/dist-packages/bcc into the venv's site-packages",
    )


def kernel_headers(dest: Path) -> str:
    """BCC_KERNEL_SOURCE for this machine, made by scripts/kernel-headers.sh."""
    result = run(["sh", str(SCRIPT), str(dest)], check=False)
    need(result.returncode == 0, f"kernel headers (linux-headers-amd64): {result.stderr.strip()}")
    return result.stdout.strip()


@contextlib.contextmanager
def ebpf_environment(tmp_root: Path):
    """Everything an eBPF collector needs here; yields the environment for the exporter."""
    need_root()
    need_bcc()
    with tracefs_mounted():
        headers = kernel_headers(tmp_root / "kernel-headers")
        old = os.environ.get("BCC_KERNEL_SOURCE")
        os.environ["BCC_KERNEL_SOURCE"] = headers  # for collectors instantiated in-process
        try:
            yield {"BCC_KERNEL_SOURCE": headers}
        finally:
            if old is None:
                os.environ.pop("BCC_KERNEL_SOURCE", None)
            else:
                os.environ["BCC_KERNEL_SOURCE"] = old
            shutil.rmtree(tmp_root / "kernel-headers", ignore_errors=True)


def wait_success(exporter: Exporter, collector: str, timeout: float = 30.0) -> dict:
    """Scrape until the collector has compiled, attached and collected; return that scrape."""
    deadline = time.monotonic() + timeout
    while True:
        metrics = exporter.scrape()
        if value(metrics, "netstack_scrape_collector_success", collector=collector) == 1:
            return metrics
        assert time.monotonic() < deadline, f"{collector} never succeeded: {exporter.log()}"
        time.sleep(0.2)


def need_core_objects() -> None:
    from collectors.ebpf_libbpf import libbpf, object_path

    try:
        libbpf()
        ok = True
    except SourceUnavailable:
        ok = False
    need(ok, "libbpf.so.1 not loadable: apt-get install libbpf1")
    missing = [p for p in (object_path("softirq"), object_path("drops")) if not os.path.exists(p)]
    need(
        not missing,
        f"CO-RE objects not built ({', '.join(missing)}): pip install -e . or "
        "python3 scripts/build_bpf.py (Debian clang, llvm, bpftool, libbpf-dev)",
    )


@contextlib.contextmanager
def core_environment():
    """What the libbpf backend needs: root, tracefs (for names), libbpf1, the built objects."""
    need_root()
    need_core_objects()
    with tracefs_mounted():
        yield {}


@pytest.fixture(scope="module")
def ebpf_env(tmp_path_factory):
    with ebpf_environment(tmp_path_factory.mktemp("ebpf")) as env:
        yield env


@pytest.fixture(scope="module", params=["libbpf", "bcc"])
def backend_env(request, tmp_path_factory):
    """(backend, environment for the exporter): each collector test runs on both backends."""
    if request.param == "bcc":
        with ebpf_environment(tmp_path_factory.mktemp("ebpf")) as env:
            yield "bcc", env
    else:
        with core_environment() as env:
            yield "libbpf", env


# --- tests ------------------------------------------------------------------------------------


def test_kernel_headers_script_is_idempotent(tmp_path):
    need_root()
    first = kernel_headers(tmp_path)
    second = kernel_headers(tmp_path)
    assert first == second
    tree = Path(first)
    assert (tree / "include" / "linux" / "kconfig.h").exists()
    if str(tree).startswith(str(tmp_path)):  # merged here (no headers for the running kernel)
        assert (tree / ".complete").exists()
        # the arch package's generated headers are merged over the common tree
        assert (tree / "include" / "generated" / "autoconf.h").exists()
        assert (tree / "arch" / "x86" / "include" / "generated").is_dir()
        assert (tree / "include" / "net" / "dropreason.h").exists()
        assert [p.name for p in tmp_path.iterdir()] == [tree.name]  # no temporary left behind


def test_compile_error_is_a_one_line_reason(ebpf_env):
    from collectors.ebpf_loader import BccLoader

    with pytest.raises(SourceUnavailable) as e:
        BccLoader().load_source("int broken( { return 0; }", {})
    assert str(e.value).startswith("BPF compile/load failed: ")
    assert "\n" not in str(e.value)


def test_bcc_program_attach_read_close_releases_everything(ebpf_env):
    """The loader interface end to end: attach, count, read the map, close leaves no BPF or
    perf-event file descriptor behind (that is what detaching means for perf-event attach)."""
    import socket

    from collectors.ebpf_loader import BccLoader

    def bpf_fds() -> int:
        n = 0
        for fd in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/self/fd/{fd}")
                n += target.startswith("anon_inode:bpf") or target == "anon_inode:[perf_event]"
        return n

    before = bpf_fds()
    source = (
        "BPF_HASH(calls, u32, u64, 16);\n"
        "int on_sendto(void *ctx) { u32 k = 0; calls.increment(k); return 0; }\n"
    )
    program = BccLoader().load_source(source, {})
    program.attach_tracepoint("syscalls", "sys_enter_sendto", "on_sendto")
    assert bpf_fds() > before
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _ in range(10):
            s.sendto(b"x", ("127.0.0.1", 9))
    assert program.read_map("calls")[0] >= 10
    program.close()
    program.close()  # twice is harmless
    assert bpf_fds() == before


def test_missing_headers_leave_the_exporter_serving(ebpf_env):
    with Exporter(
        "--collector.disable-defaults",
        "--collector.ebpf_drops",
        "--collector.ebpf_drops.backend=bcc",
        env={"BCC_KERNEL_SOURCE": "/nonexistent/headers"},
    ) as exporter:
        metrics = exporter.scrape()
        assert value(metrics, "netstack_collector_available", collector="ebpf_drops") == 0
        assert value(metrics, "netstack_scrape_collector_success", collector="ebpf_drops") == 0
        with exporter.get("/") as r:
            page = r.read().decode()
        assert "BCC_KERNEL_SOURCE=/nonexistent/headers is not a kernel header tree" in page
        assert "Traceback" not in exporter.log()


def test_without_capabilities_the_collectors_are_unavailable(ebpf_env):
    """uid 0 with an empty capability set: exactly what 'not root' means to the kernel."""
    need(shutil.which("setpriv") is not None, "needs setpriv (util-linux)")
    exporter = Exporter(
        "--collector.disable-defaults", "--collector.ebpf_drops", "--collector.ebpf_softirq", env=ebpf_env
    )
    exporter.args = ["setpriv", "--bounding-set=-all", "--inh-caps=-all", *exporter.args]
    with exporter:
        metrics = exporter.scrape()
        for collector in ("ebpf_drops", "ebpf_softirq"):
            assert value(metrics, "netstack_collector_available", collector=collector) == 0
        with exporter.get("/") as r:
            page = r.read().decode()
        assert "needs root, or CAP_BPF + CAP_PERFMON" in page
        assert "Traceback" not in exporter.log()


def test_close_on_sigterm_while_compiling_exits_cleanly(ebpf_env):
    exporter = Exporter(
        "--collector.disable-defaults", "--collector.ebpf_softirq", "--collector.ebpf_drops", env=ebpf_env
    )
    with exporter:
        pass  # ready means first collection done; compile is likely still running: stop now
    assert exporter.proc.returncode == 0, exporter.proc.returncode
