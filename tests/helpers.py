"""Shared test helpers: skips that turn into failures in CI, network namespaces, the exporter
as a subprocess, and a scrape parser."""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
IN_CI = os.environ.get("CI", "").lower() == "true"
CLONE_NEWNET = 0x40000000


def need(condition: bool, reason: str) -> None:
    """Skip with `reason` on a laptop; in CI (CI=true) a missing prerequisite is a failure."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"CI must provide this: {reason}")
    pytest.skip(reason)


def need_root() -> None:
    need(os.geteuid() == 0, "needs root")


def need_tool(name: str, package: str) -> str:
    path = shutil.which(name)
    need(path is not None, f"needs {name} (Debian package {package})")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process(proc: subprocess.Popen, timeout: float = 5) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `timeout` seconds."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def run(cmd: list[str], check: bool = True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=check, capture_output=True, text=True, **kw)


class Netns:
    """A network namespace owned by one test: created on enter, deleted (with its links) on exit."""

    def __init__(self, prefix: str = "nse"):
        self.name = f"{prefix}-{uuid.uuid4().hex[:8]}"

    def __enter__(self) -> Netns:
        need_root()
        need_tool("ip", "iproute2")
        run(["ip", "netns", "add", self.name])
        self.ip("link", "set", "lo", "up")
        return self

    def __exit__(self, *exc) -> None:
        run(["ip", "netns", "del", self.name], check=False)

    def exec(self, *cmd: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
        return run(["ip", "netns", "exec", self.name, *cmd], check=check, **kw)

    def ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return run(["ip", "-n", self.name, *args], check=check)

    def popen(self, *cmd: str, **kw) -> subprocess.Popen:
        return subprocess.Popen(["ip", "netns", "exec", self.name, *cmd], **kw)

    @contextlib.contextmanager
    def entered(self):
        """Move the calling thread into this namespace for the block (setns), then back: an
        exporter inside listens on the namespace's own loopback, unreachable from outside."""
        libc = ctypes.CDLL(None, use_errno=True)
        with open("/proc/thread-self/ns/net") as home, open(f"/run/netns/{self.name}") as target:
            if libc.setns(target.fileno(), CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), f"setns into {self.name}")
            try:
                yield
            finally:
                if libc.setns(home.fileno(), CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns back to the test's namespace")


def parse_metrics(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample_name, sorted label items): value} for easy assertions."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def collector_text(collector) -> str:
    """One collect() of a collector, encoded as the exporter encodes it (0.0.4 text format); a
    Failed reading's families are served too, as the exporter serves them."""
    from exporter.contract import Failed
    from exporter.exposition import encode_text

    try:
        families = list(collector.collect())
    except Failed as e:
        families = e.families
    return encode_text(families).decode()


def collector_metrics(collector) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """One collect() of a collector, encoded by the exporter and parsed back (see parse_metrics)."""
    return parse_metrics(collector_text(collector))


def samples(metrics: dict, name: str, **labels: str) -> dict[tuple, float]:
    """All samples called `name` whose labels include `labels`."""
    want = set(labels.items())
    return {k: v for k, v in metrics.items() if k[0] == name and want <= set(k[1])}


def value(metrics: dict, name: str, **labels: str) -> float:
    found = samples(metrics, name, **labels)
    assert len(found) == 1, f"expected one {name}{labels}, found {sorted(found)}"
    return next(iter(found.values()))


class Exporter:
    """netstack-exporter as a subprocess on a free loopback port, optionally inside a netns."""

    def __init__(
        self, *args: str, netns: Netns | None = None, env: dict | None = None, wait_ready: bool = True
    ):
        self.wait = wait_ready
        self.netns = netns
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = [sys.executable, "-m", "exporter", f"--web.listen-address=127.0.0.1:{self.port}", *args]
        if netns is not None:
            self.args = ["ip", "netns", "exec", netns.name, *self.args]
        self.env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
        self.proc: subprocess.Popen | None = None
        self.log_path = None

    def __enter__(self) -> Exporter:
        import tempfile

        self._log = tempfile.NamedTemporaryFile(prefix="exporter-", suffix=".log", delete=False)
        self.log_path = self._log.name
        self.proc = subprocess.Popen(
            self.args, env=self.env, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT
        )
        if self.wait:
            try:
                self.wait_ready()
            except BaseException:
                self.__exit__(None, None, None)
                raise
        return self

    def _http_context(self):
        return self.netns.entered() if self.netns is not None else contextlib.nullcontext()

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"exporter exited {self.proc.returncode}: {self.log()}")
            try:
                with self._http_context(), urllib.request.urlopen(self.url + "/readyz", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"exporter not ready after {timeout}s: {self.log()}")

    def log(self) -> str:
        return Path(self.log_path).read_text() if self.log_path else ""

    def get(self, path: str = "/metrics", headers: dict | None = None, timeout: float = 30):
        req = urllib.request.Request(self.url + path, headers=headers or {})
        with self._http_context():  # the connection is made inside; reading it works from anywhere
            return urllib.request.urlopen(req, timeout=timeout)

    def scrape_text(self) -> str:
        with self.get() as r:
            return r.read().decode()

    def scrape(self) -> dict:
        return parse_metrics(self.scrape_text())

    def __exit__(self, *exc) -> None:
        if self.proc:
            stop_process(self.proc)
        with contextlib.suppress(OSError):
            self._log.close()
            os.unlink(self.log_path)


@contextlib.contextmanager
def prometheus_server(config: str, workdir: Path):
    """A real Prometheus (Debian's) with `config` as its prometheus.yml, data and log in
    workdir, listening on a free loopback port: yields its base URL, stops it after. The config
    is checked with promtool first, so a broken one fails with promtool's reason."""
    binary = need_tool("prometheus", "prometheus")
    config_file = workdir / "prometheus.yml"
    config_file.write_text(config)
    subprocess.run(
        [need_tool("promtool", "prometheus"), "check", "config", str(config_file)],
        check=True,
        capture_output=True,
    )
    port = free_port()
    with open(workdir / "prometheus.log", "w") as log:
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config_file}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            stop_process(proc, 10)
