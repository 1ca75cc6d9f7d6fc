"""The exporter process end to end over HTTP: endpoints, formats, coalescing, timeouts, and
failures of one source that must not take the others down."""

import gzip
import os
import shutil
import signal
import subprocess
import threading
import time
import urllib.error

import pytest

from tests.helpers import FIXTURES, Exporter, need_tool, parse_metrics, value

BASE = ("--collector.disable-defaults", "--collector.cpu", "--collector.softirq")


@pytest.fixture
def procfs(tmp_path):
    tree = tmp_path / "proc"
    shutil.copytree(FIXTURES / "procfs", tree)
    return tree


def exporter(procfs, *extra):
    return Exporter(*BASE, f"--path.procfs={procfs}", *extra)


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


def test_concurrent_scrapes_are_coalesced(procfs):
    with exporter(procfs) as exp:
        before = exp.scrape()
        results = []
        threads = [threading.Thread(target=lambda: results.append(exp.scrape())) for _ in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        with exp.get("/") as r:
            page = r.read().decode()
    assert len(results) == 20
    collections = int(page.split("collections so far: ")[1].split("<")[0])
    # 1 warm-up + 1 sequential scrape + far fewer than 20 for the concurrent burst
    assert collections - 2 < 20, collections
    assert all(value(r, "netstack_scrape_collector_success", collector="cpu") == 1 for r in results)
    assert before


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
    lines = [l for l in log.splitlines() if "collector unavailable" in l]
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
    failed = [l for l in log.splitlines() if "collector failed" in l]
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
        for s in stalled + [reader]:
            s.close()


def test_not_ready_until_the_first_collection_completes(procfs):
    os.unlink(procfs / "stat")
    os.mkfifo(procfs / "stat")  # the first collection hangs on it until the 2 s timeout
    with Exporter(*BASE, f"--path.procfs={procfs}", "--scrape.timeout=2s", wait_ready=False) as exp:
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
            [*first.args[:3], *BASE, f"--path.procfs={procfs}", f"--web.listen-address=127.0.0.1:{first.port}"],
            env=first.env, cwd=first.env["PYTHONPATH"], capture_output=True, text=True, timeout=20)
    assert result.returncode == 1
    assert "cannot listen" in result.stderr and "Traceback" not in result.stderr
