"""The real exporter behind --web.config.file and the connection limits: TLS with openssl-made
certificates, basic auth with htpasswd-made hashes, client certificates, SIGHUP rotation,
--web.max-requests, the scrape timeout header, and idle/slowloris floods under a 1,024-file limit."""

from __future__ import annotations

import http.client
import os
import re
import resource
import signal
import socket
import ssl
import subprocess
import sys
import time

import pytest

from tests.helpers import ROOT, Exporter, need_tool, parse_metrics, value
from tests.tls import (
    TLSExporter,
    basic,
    bcrypt_hash,
    client_context,
    https_get,
    make_ca,
    make_cert,
    serial_of,
    write_web_config,
)

CORE = ("--collector.disable-defaults", "--collector.cpu", "--collector.softirq")


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca = make_ca(d, "ca")
    return {
        "dir": d,
        "ca": ca,
        "server": make_cert(ca, d, "server"),
        "server2": make_cert(ca, d, "server2"),
        "client": make_cert(ca, d, "client"),
        "stranger": make_cert(make_ca(d, "other-ca"), d, "stranger"),
        "hash": bcrypt_hash("s3cret"),
    }


def test_tls_and_basic_auth(pki, tmp_path):
    config = write_web_config(
        tmp_path / "web.yml",
        pair=pki["server"],
        users={"prometheus": pki["hash"]},
        headers={"X-Frame-Options": "deny", "X-Content-Type-Options": "nosniff"},
    )
    ctx = client_context(pki["ca"])
    with TLSExporter(*CORE, f"--web.config.file={config}", ctx=ctx) as e:
        status, headers, body, peer = e.get_tls(headers=basic("prometheus", "s3cret"))
        assert status == 200 and b"netstack_cpu_seconds_total" in body
        assert peer["serialNumber"] == serial_of(pki["server"])
        assert headers["X-Frame-Options"] == "deny" and headers["X-Content-Type-Options"] == "nosniff"
        assert headers["Server"] == "netstack-exporter"  # no Python/aiohttp versions
        for creds in ({}, basic("prometheus", "wrong"), basic("mallory", "s3cret")):
            status, headers, body, _ = e.get_tls(headers=creds)
            assert status == 401 and headers["WWW-Authenticate"] == "Basic"
            assert headers["Server"] == "netstack-exporter"
            assert b"netstack_" not in body
            assert headers["X-Frame-Options"] == "deny"
        for path in ("/", "/metrics"):
            assert e.get_tls(path)[0] == 401
        assert e.get_tls("/healthz")[0] == 200  # kubelet probes carry no credentials
        # plain HTTP to the TLS port: no metrics, and the exporter keeps serving
        conn = http.client.HTTPConnection("127.0.0.1", e.port, timeout=5)
        with pytest.raises((http.client.HTTPException, OSError)):
            conn.request("GET", "/metrics", headers=basic("prometheus", "s3cret"))
            response = conn.getresponse()
            assert b"netstack_" not in response.read()
            raise http.client.HTTPException(f"answered HTTP {response.status}")
        assert e.get_tls(headers=basic("prometheus", "s3cret"))[0] == 200


def test_client_certificates_required(pki, tmp_path):
    config = write_web_config(tmp_path / "web.yml", pair=pki["server"], client_ca=pki["ca"])
    with TLSExporter(*CORE, f"--web.config.file={config}", ctx=client_context(pki["ca"], pki["client"])) as e:
        assert e.get_tls()[0] == 200
        for ctx in (client_context(pki["ca"]), client_context(pki["ca"], pki["stranger"])):
            with pytest.raises((ssl.SSLError, ConnectionError, http.client.RemoteDisconnected)):
                https_get(e.port, "/metrics", ctx)
        assert e.get_tls()[0] == 200


def test_sighup_rotates_the_certificate_and_a_bad_file_keeps_the_old(pki, tmp_path):
    config = write_web_config(tmp_path / "web.yml", pair=pki["server"])
    ctx = client_context(pki["ca"])
    with TLSExporter(*CORE, f"--web.config.file={config}", ctx=ctx) as e:
        assert e.get_tls()[3]["serialNumber"] == serial_of(pki["server"])
        config.write_text(config.read_text() + "  min_version: TLS99\n")
        e.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "web config reload failed" not in e.log() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "TLS99" in e.log()
        assert e.get_tls()[3]["serialNumber"] == serial_of(pki["server"])  # old config kept
        write_web_config(config, pair=pki["server2"])
        e.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while e.get_tls()[3]["serialNumber"] != serial_of(pki["server2"]):
            assert time.monotonic() < deadline, e.log()
            time.sleep(0.05)
        assert e.proc.poll() is None


def test_bad_web_config_exits_2_naming_the_key(tmp_path):
    config = tmp_path / "web.yml"
    config.write_text("tls_server_config:\n  cert_file: a.crt\n  key_file: a.key\n  client_auth: x\n")
    proc = subprocess.run(
        [sys.executable, "-m", "exporter", f"--web.config.file={config}"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert "--web.config.file" in proc.stderr and "tls_server_config.client_auth: unknown key" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_max_requests_answers_503_past_the_limit(tmp_path):
    # bcrypt at cost 13 (~1 s here) keeps the first request in flight while the others arrive
    config = write_web_config(tmp_path / "web.yml", users={"prometheus": bcrypt_hash("pw", cost=13)})
    with Exporter(*CORE, f"--web.config.file={config}", "--web.max-requests=1") as e:
        socks = []
        for user in ("a", "b", "c"):
            s = socket.create_connection(("127.0.0.1", e.port), timeout=10)
            s.sendall(
                b"GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: "
                + basic(user, "guess")["Authorization"].encode()
                + b"\r\n\r\n"
            )
            socks.append(s)
            time.sleep(0.05)
        statuses = [int(s.recv(100).split()[1]) for s in socks]
        for s in socks:
            s.close()
        assert statuses == [401, 503, 503], statuses
        assert e.get("/healthz").status == 200


@pytest.mark.parametrize("header", ["0", "-1", "NaN", "inf", "-inf", "garbage", "0.001", "1e308", ""])
def test_scrape_timeout_header_values(header):
    with Exporter(*CORE) as e:
        with e.get(headers={"X-Prometheus-Scrape-Timeout-Seconds": header}) as r:
            m = parse_metrics(r.read().decode())
        assert value(m, "netstack_scrape_collector_success", collector="cpu") == 1
        assert value(m, "netstack_scrape_collector_success", collector="softirq") == 1


def _raise_own_fd_limit(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(need, soft)), hard))


@pytest.mark.parametrize("tls", [False, True], ids=["http", "tls"])
def test_idle_and_slowloris_flood_under_a_1024_file_limit(pki, tmp_path, tls):
    """1,200 idle and 200 slowloris connections held open against an exporter limited to 1,024
    open files (systemd's default soft limit): a normal scrape is still answered within 1 s.
    With TLS the idle ones never start a handshake and the slow ones trickle a ClientHello."""
    prlimit = need_tool("prlimit", "util-linux")
    _raise_own_fd_limit(4096)
    if tls:
        config = write_web_config(tmp_path / "web.yml", pair=pki["server"])
        exporter: Exporter = TLSExporter(
            *CORE,
            f"--web.config.file={config}",
            ctx=client_context(pki["ca"]),
            prefix=(prlimit, "--nofile=1024"),
        )
        head, trickle = b"\x16\x03\x01\x02\x00\x01", b"\x00"  # a ClientHello record never finished
    else:
        exporter = Exporter(*CORE)
        exporter.args = [prlimit, "--nofile=1024", *exporter.args]
        head, trickle = b"GET /metrics HTTP/1.1\r\nHost: x\r\n", b"X"  # a request head never finished

    def scrape() -> None:
        if tls:
            status, _, body, _ = https_get(exporter.port, "/metrics", client_context(pki["ca"]), timeout=5)
        else:
            with exporter.get(timeout=5) as r:
                status, body = r.status, r.read()
        assert status == 200 and b"netstack_cpu_seconds_total" in body

    with exporter as e:
        held = []
        try:
            for _ in range(1400):
                s = socket.socket()
                s.setblocking(False)
                s.connect_ex(("127.0.0.1", e.port))
                held.append(s)
            # SYNs dropped while the accept queue was full are sent again after 1 s and 3 s:
            # wait until every connection had its chance to be accepted
            time.sleep(4.5)
            for s in held[1200:]:  # slowloris
                try:
                    s.send(head)
                except OSError:
                    pass
            latencies = []
            for _ in range(5):
                start = time.monotonic()
                scrape()
                latencies.append(time.monotonic() - start)
                for s in held[1200:]:  # keep the trickle going
                    try:
                        s.send(trickle)
                    except OSError:
                        pass
                time.sleep(0.2)
            print("scrape latencies under flood (s):", [round(x, 3) for x in latencies])
            assert max(latencies) < 1.0, latencies
        finally:
            for s in held:
                s.close()
        assert e.proc.poll() is None
        log = e.log()
    assert "Traceback" not in log
    accept_errors = log.count("out of system resource")
    assert accept_errors <= 5, log[-3000:]


def test_accept_errors_logged_at_most_once_a_second_with_a_count(tmp_path):
    """Far too few files (prlimit 48) and a burst of connections: accept() fails with EMFILE
    many times; the log has at most one line a second, each with the count."""
    prlimit = need_tool("prlimit", "util-linux")
    _raise_own_fd_limit(4096)
    exporter = Exporter(*CORE)
    exporter.args = [prlimit, "--nofile=48", *exporter.args]
    with exporter as e:
        held = []
        start = time.monotonic()
        try:
            while time.monotonic() - start < 3:
                for _ in range(100):
                    s = socket.socket()
                    s.setblocking(False)
                    s.connect_ex(("127.0.0.1", e.port))
                    held.append(s)
                time.sleep(0.1)
                if len(held) > 1500:
                    for s in held[:500]:
                        s.close()
                    del held[:500]
        finally:
            for s in held:
                s.close()
        time.sleep(1.5)  # the last suppressed count is flushed within a second
        lines = [line for line in e.log().splitlines() if "out of system resource" in line]
    assert lines, "no accept error at all: the test did not reach the file limit"
    counts = [int(re.search(r"count=(\d+)", line).group(1)) for line in lines]
    assert len(lines) <= 3 / 1.0 + 3, lines
    assert len(lines) < sum(counts) or sum(counts) == len(lines) == 1, counts


def _closed_after(s: socket.socket, limit: float) -> float:
    """Seconds until the server closes `s` (recv returns b'' or resets), at most `limit`."""
    start = time.monotonic()
    s.settimeout(limit)
    try:
        while s.recv(65536):
            pass
    except (ConnectionResetError, TimeoutError):
        pass
    return time.monotonic() - start


def test_header_and_idle_timeouts_close_connections():
    with Exporter(*CORE, "--web.read-header-timeout=1s", "--web.idle-timeout=2s") as e:
        silent = socket.create_connection(("127.0.0.1", e.port))
        slow = socket.create_connection(("127.0.0.1", e.port))
        slow.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # never finished
        keepalive = http.client.HTTPConnection("127.0.0.1", e.port, timeout=10)
        keepalive.request("GET", "/healthz")
        assert keepalive.getresponse().read() == b"ok\n"
        answered = time.monotonic()
        assert _closed_after(silent, 5) < 2.5
        assert _closed_after(slow, 5) < 2.5
        _closed_after(keepalive.sock, 6)
        idle = time.monotonic() - answered
        assert 1.5 < idle < 3.5, idle


def test_client_allowed_sans(pki, tmp_path):
    allowed = make_cert(pki["ca"], tmp_path, "prom", sans="DNS:prometheus.example")
    config = write_web_config(tmp_path / "web.yml", pair=pki["server"], client_ca=pki["ca"])
    config.write_text(config.read_text() + "  client_allowed_sans: [prometheus.example]\n")
    with TLSExporter(*CORE, f"--web.config.file={config}", ctx=client_context(pki["ca"], allowed)) as e:
        assert e.get_tls()[0] == 200
        # same CA, verified, but without the allowed SAN
        with pytest.raises((ssl.SSLError, ConnectionError, http.client.RemoteDisconnected)):
            https_get(e.port, "/metrics", client_context(pki["ca"], pki["client"]))
