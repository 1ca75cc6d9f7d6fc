"""The exporter process end to end over HTTP: endpoints, formats, coalescing, timeouts, and
failures of one source that must not take the others down."""

import gzip
import os
import shutil
import signal
import subprocess
import threading
import time

import pytest

from tests.helpers import FIXTURES, Exporter, need_tool, parse_metrics, value

BASE = ("--collector.disable-defaults", "--collector.cpu", "--collector.softirq")


@pytest.fixture
def procfs(tmp_path):
    """The fixture /proc, with a /sys beside it whose online CPUs match its /proc/stat."""
    tree = tmp_path / "proc"
    shutil.copytree(FIXTURES / "procfs", tree)
    online = tmp_path / "sys/devices/system/cpu/online"
    online.parent.mkdir(parents=True)
    online.write_text("0-1,3\n")
    return tree


def paths(procfs):
    return f"--path.procfs={procfs}", f"--path.sysfs={procfs.parent / 'sys'}"


def exporter(procfs, *extra):
    return Exporter(*BASE, *paths(procfs), *extra)


def status(exp, path, method="GET"):
    import urllib.request

    req = urllib.request.Request(exp.url + path, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_endpoints_and_methods(procfs):
    with exporter(procfs) as exp:
        assert status(exp, "/healthz") == 200
        assert status(exp, "/readyz") == 200
        assert status(exp, "/metrics") == 200
        assert status(exp, "/nope") == 404
        assert status(exp, "/metrics", "POST") == 405
        assert status(exp, "/", "DELETE") == 405
        with exp.get("/") as r:
            page = r.read().decode()
        assert "<table>" in page and "softirq" in page and "cpu" in page


def test_custom_telemetry_path(procfs):
    with exporter(procfs, "--web.telemetry-path=/x/metrics") as exp:
        assert status(exp, "/x/metrics") == 200
        assert status(exp, "/metrics") == 404


def test_openmetrics_and_gzip_negotiation(procfs):
    with exporter(procfs) as exp:
        with exp.get(headers={"Accept": "application/openmetrics-text; version=1.0.0"}) as r:
            assert r.headers["Content-Type"].startswith("application/openmetrics-text")
            body = r.read().decode()
        assert body.endswith("# EOF\n") and "# TYPE netstack_cpu_seconds counter" in body
        with exp.get(headers={"Accept-Encoding": "gzip"}) as r:
            assert r.headers["Content-Encoding"] == "gzip"
            assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            text = gzip.decompress(r.read()).decode()
        assert 'netstack_cpu_seconds_total{cpu="3",mode="steal"} 221.51' in text
        with exp.get() as r:
            assert "Content-Encoding" not in r.headers


def test_success_and_self_metrics(procfs):
    with exporter(procfs) as exp:
        m = exp.scrape()
    assert value(m, "netstack_scrape_collector_success", collector="cpu") == 1
    assert value(m, "netstack_scrape_collector_success", collector="softirq") == 1
    assert value(m, "netstack_scrape_collector_duration_seconds", collector="cpu") > 0
    assert value(m, "netstack_build_info") == 1
    # The process metrics are the exporter's own, not the fixture tree's (which has no 'self').
    assert value(m, "process_resident_memory_bytes") > 1e6
    assert value(m, "process_open_fds") > 0


class SlowFile:
    """Serves `content` through a FIFO at `path`, each reader getting it `delay` seconds after it
    opened the file (`first_delay` for the first reader): a source that takes that long to read.
    While held (hold() until release()), readers wait for the release as well."""

    def __init__(self, path, content: bytes, delay: float, first_delay: float | None = None):
        self.path, self.content, self.delay = path, content, delay
        self.first_delay = delay if first_delay is None else first_delay
        self.reads = 0
        self._stop = threading.Event()
        self._released = threading.Event()
        self._released.set()
        os.unlink(path)
        os.mkfifo(path)
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self):
        while not self._stop.is_set():
            try:  # non-blocking open: fails (ENXIO) until a reader has the FIFO open
                fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:
                time.sleep(0.005)
                continue
            try:
                self.reads += 1
                self._stop.wait(self.first_delay if self.reads == 1 else self.delay)
                self._released.wait(30)
                os.set_blocking(fd, True)
                os.write(fd, self.content)
            except OSError:  # the reader went away (a probe reads one byte)
                pass
            finally:
                os.close(fd)
            # Until this reader has closed the FIFO, opening it again would succeed and feed the
            # same reader twice; it reads a small file at once.
            self._stop.wait(0.2)

    def hold(self):
        self._released.clear()

    def release(self):
        self._released.set()

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._released.set()
        self._thread.join(5)


def test_concurrent_scrapes_are_coalesced(procfs):
    # /proc/stat is held until all 20 scrapes have been sent, so they all arrive while one
    # collection runs.
    import http.client

    slow = SlowFile(procfs / "stat", (procfs / "stat").read_bytes(), delay=0.5)
    with slow, exporter(procfs) as exp:
        reads = slow.reads  # the warm-up's probe and collection
        slow.hold()
        sent = threading.Semaphore(0)
        bodies = []

        def scrape():
            conn = http.client.HTTPConnection("127.0.0.1", exp.port, timeout=30)
            conn.request("GET", "/metrics")
            sent.release()
            bodies.append(conn.getresponse().read().decode())
            conn.close()

        threads = [threading.Thread(target=scrape) for _ in range(20)]
        for t in threads:
            t.start()
        for _ in threads:
            assert sent.acquire(timeout=30)
        time.sleep(0.3)
        slow.release()
        for t in threads:
            t.join()
        assert slow.reads - reads == 1  # one collection for the whole burst
    assert len(bodies) == 20
    results = [parse_metrics(b) for b in bodies]
    assert all(value(r, "netstack_scrape_collector_success", collector="cpu") == 1 for r in results)
    durations = {value(r, "netstack_scrape_collector_duration_seconds", collector="cpu") for r in results}
    assert len(durations) == 1 and durations.pop() >= 0.5  # the same (slow) collection for all


def test_a_probe_past_the_timeout_is_a_failure_not_an_absence(procfs):
    # Issue 11.1: cpu's first probe (one read of /proc/stat) takes 1.5 s, the scrape timeout is
    # 0.5 s. The source exists: available stays 1, the scrape fails, the next ones succeed.
    content = (procfs / "stat").read_bytes()
    with (
        SlowFile(procfs / "stat", content, delay=0.0, first_delay=1.5),
        exporter(procfs, "--scrape.timeout=500ms") as exp,
    ):
        m = exp.scrape()
        assert value(m, "netstack_collector_available", collector="cpu") == 1
        deadline = time.monotonic() + 10
        while value(m, "netstack_scrape_collector_success", collector="cpu") != 1:
            assert time.monotonic() < deadline, exp.log()
            time.sleep(0.1)
            m = exp.scrape()
        assert value(m, "netstack_collector_available", collector="cpu") == 1
        log = exp.log()
    assert "collector unavailable" not in log
    failed = [line for line in log.splitlines() if "collector failed" in line and "collector=cpu" in line]
    assert failed and "probe timed out after 0.5s" in failed[0], log


def test_a_value_the_encoder_cannot_print_fails_only_its_collector(procfs):
    # A 3,600-digit hex counter: more decimal digits than Python will print. It must cost the
    # softirq collector (or its parser) that scrape, not the whole /metrics.
    lines = (procfs / "net/softnet_stat").read_text().splitlines()
    fields = lines[0].split()
    fields[1] = "f" * 3600
    lines[0] = " ".join(fields)
    (procfs / "net/softnet_stat").write_text("\n".join(lines) + "\n")
    with exporter(procfs) as exp:
        for headers in ({}, {"Accept": "application/openmetrics-text; version=1.0.0"}):
            with exp.get(headers=headers) as r:
                assert r.status == 200
                body = r.read().decode()
            m = parse_metrics(body.removesuffix("# EOF\n"))
            assert value(m, "netstack_scrape_collector_success", collector="softirq") == 0
            assert value(m, "netstack_scrape_collector_success", collector="cpu") == 1
            assert value(m, "netstack_cpu_seconds_total", cpu="0", mode="steal") == 223.01
        log = exp.log()
    failed = [line for line in log.splitlines() if "collector failed" in line and "softirq" in line]
    assert len(failed) == 1, log
    assert "f" * 100 not in log  # the bad value is not echoed into the log


def test_missing_source_fails_only_that_collector(procfs):
    os.unlink(procfs / "softirqs")
    with exporter(procfs) as exp:
        m = exp.scrape()
        exp.scrape()
        log = exp.log()
    assert value(m, "netstack_scrape_collector_success", collector="softirq") == 0
    assert value(m, "netstack_collector_available", collector="softirq") == 0
    assert value(m, "netstack_scrape_collector_success", collector="cpu") == 1
    assert value(m, "netstack_cpu_seconds_total", cpu="0", mode="steal") == 223.01
    lines = [line for line in log.splitlines() if "collector unavailable" in line]
    assert len(lines) == 1 and "collector=softirq" in lines[0] and "does not exist" in lines[0]
    assert "Traceback" not in log


def test_garbled_source_fails_only_that_collector_and_logs_once(procfs):
    (procfs / "net/softnet_stat").write_text("this is not softnet_stat\n")
    with exporter(procfs) as exp:
        for _ in range(3):
            m = exp.scrape()
        with exp.get("/") as r:
            page = r.read().decode()
        log = exp.log()
    assert value(m, "netstack_scrape_collector_success", collector="softirq") == 0
    assert value(m, "netstack_collector_available", collector="softirq") == 1
    assert value(m, "netstack_scrape_collector_success", collector="cpu") == 1
    failed = [line for line in log.splitlines() if "collector failed" in line]
    assert len(failed) == 1 and "ParseError" in failed[0] and "softnet_stat" in failed[0]
    assert "softnet_stat" in page  # the reason is visible on the landing page
    assert "Traceback" not in log


def test_unreadable_source_fails_only_that_collector(procfs, tmp_path):
    setpriv = need_tool("setpriv", "util-linux")
    os.chmod(procfs / "stat", 0)
    # Drop the capabilities that let root read anything, so the permission bits apply.
    exp = exporter(procfs)
    exp.args = [setpriv, "--bounding-set=-dac_override,-dac_read_search", *exp.args]
    with exp:
        m = exp.scrape()
        log = exp.log()
    assert value(m, "netstack_scrape_collector_success", collector="cpu") == 0
    assert value(m, "netstack_scrape_collector_success", collector="softirq") == 1
    assert "permission denied" in log and "Traceback" not in log


def test_stuck_source_cannot_delay_the_scrape_past_the_timeout(procfs):
    # A FIFO with no writer blocks the reader forever, like a hung kernel read.
    os.unlink(procfs / "stat")
    os.mkfifo(procfs / "stat")
    with exporter(procfs, "--scrape.timeout=1s") as exp:  # readiness despite the stuck collector
        for _ in range(2):
            start = time.monotonic()
            m = exp.scrape()
            assert time.monotonic() - start < 2.5
            assert value(m, "netstack_scrape_collector_success", collector="cpu") == 0
            assert value(m, "netstack_scrape_collector_success", collector="softirq") == 1
        # Prometheus' own scrape timeout header lowers the budget further.
        start = time.monotonic()
        with exp.get(headers={"X-Prometheus-Scrape-Timeout-Seconds": "0.8"}) as r:
            parse_metrics(r.read().decode())
        assert time.monotonic() - start < 1.5


def test_a_stalled_client_does_not_block_other_scrapes(procfs):
    import socket

    with exporter(procfs) as exp:
        stalled = []
        for _ in range(5):  # half-sent requests that never finish, and one that never reads
            s = socket.create_connection(("127.0.0.1", exp.port))
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
            stalled.append(s)
        reader = socket.create_connection(("127.0.0.1", exp.port))
        reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
        for _ in range(50):
            reader.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        start = time.monotonic()
        for _ in range(5):
            assert value(exp.scrape(), "netstack_scrape_collector_success", collector="cpu") == 1
        assert time.monotonic() - start < 2
        for s in [*stalled, reader]:
            s.close()


@pytest.mark.parametrize("level", ["info", "debug"])
def test_a_malformed_request_is_a_debug_line_with_the_reason(procfs, level):
    import socket

    requests = (
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
        b"GET / HTTP/1.1\r\nHo st: x\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
    )  # TLS to a plain port
    with exporter(procfs, f"--log.level={level}") as exp:
        for request in requests:
            with socket.create_connection(("127.0.0.1", exp.port), timeout=5) as s:
                s.sendall(request)
                assert s.recv(100).startswith(b"HTTP/1.0 400")
        assert status(exp, "/metrics") == 200
        log = exp.log()
    assert "level=error" not in log and "Traceback" not in log
    lines = [line for line in log.splitlines() if "malformed HTTP request" in line]
    if level == "info":
        assert lines == []
    else:
        assert len(lines) == 3, log
        assert all("level=debug" in line and "reason=" in line and "peer=127.0.0.1" in line for line in lines)


def test_not_ready_until_the_first_collection_completes(procfs):
    os.unlink(procfs / "stat")
    os.mkfifo(procfs / "stat")  # the first collection hangs on it until the 2 s timeout
    with Exporter(*BASE, *paths(procfs), "--scrape.timeout=2s", wait_ready=False) as exp:
        deadline = time.monotonic() + 10
        while status_or_none(exp, "/healthz") != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert status(exp, "/readyz") == 503
        exp.wait_ready()
        assert status(exp, "/readyz") == 200


def status_or_none(exp, path):
    try:
        return status(exp, path)
    except OSError:
        return None


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signals_shut_down_within_a_second(procfs, sig):
    with exporter(procfs) as exp:
        exp.scrape()
        start = time.monotonic()
        exp.proc.send_signal(sig)
        exp.proc.wait(5)
        assert time.monotonic() - start < 1.0
        assert exp.proc.returncode == 0
        assert "shutting down" in exp.log()


def test_listen_failure_is_one_clear_line(procfs):
    with exporter(procfs) as first:
        result = subprocess.run(
            [*first.args[:3], *BASE, *paths(procfs), f"--web.listen-address=127.0.0.1:{first.port}"],
            env=first.env,
            cwd=first.env["PYTHONPATH"],
            capture_output=True,
            text=True,
            timeout=20,
        )
    assert result.returncode == 1
    assert "cannot listen" in result.stderr and "Traceback" not in result.stderr
