"""A real Prometheus (Debian) scrapes the exporter over TLS with basic_auth and tls_config (CA
and client certificate): up == 1; a wrong password or a missing client certificate: up == 0;
a certificate rotated by SIGHUP is what the next scrape sees."""

from __future__ import annotations

import contextlib
import datetime
import json
import re
import signal
import time
import urllib.request

import pytest

from tests.e2e.test_prometheus import query, wait_for
from tests.helpers import prometheus_server
from tests.tls import TLSExporter, basic, bcrypt_hash, client_context, make_ca, make_cert, write_web_config

CORE = ("--collector.disable-defaults", "--collector.cpu", "--collector.softirq")


@pytest.fixture
def prometheus(tmp_path):
    def start(jobs: list[str]) -> str:
        config = "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n" + "".join(jobs)
        return stack.enter_context(prometheus_server(config, tmp_path))

    with contextlib.ExitStack() as stack:
        yield start


def job(name: str, port: int, ca, client=None, password: str | None = "s3cret") -> str:
    text = f"  - job_name: {name}\n    scheme: https\n    tls_config:\n      ca_file: {ca.cert}\n"
    if client is not None:
        text += f"      cert_file: {client.cert}\n      key_file: {client.key}\n"
    if password is not None:
        text += f"    basic_auth:\n      username: prometheus\n      password: {password}\n"
    return text + f"    static_configs:\n      - targets: ['127.0.0.1:{port}']\n"


def up(base: str, name: str) -> str | None:
    result = query(base, f'up{{job="{name}"}}')
    return result[0]["value"][1] if result else None


def wait_up(base: str, name: str, want: str, timeout: float = 30) -> str | None:
    deadline = time.monotonic() + timeout
    got = None
    while time.monotonic() < deadline:
        try:
            got = up(base, name)
        except OSError:
            got = None
        if got == want:
            return got
        time.sleep(0.3)
    return got


def test_prometheus_scrapes_over_tls_with_basic_auth_and_client_certificates(prometheus, tmp_path):
    ca = make_ca(tmp_path, "ca")
    server, client = make_cert(ca, tmp_path, "server"), make_cert(ca, tmp_path, "prometheus")
    config = write_web_config(
        tmp_path / "web.yml", pair=server, client_ca=ca, users={"prometheus": bcrypt_hash("s3cret")}
    )
    ctx = client_context(ca, client)
    with TLSExporter(
        *CORE, f"--web.config.file={config}", ctx=ctx, headers=basic("prometheus", "s3cret")
    ) as e:
        base = prometheus(
            [
                job("good", e.port, ca, client),
                job("badpass", e.port, ca, client, "wrong"),
                job("nocert", e.port, ca, None),
                job("noauth", e.port, ca, client, None),
            ]
        )
        assert wait_up(base, "good", "1") == "1"
        steal = wait_for(base, 'netstack_cpu_seconds_total{job="good",mode="steal"}', 1)
        assert steal
        for name in ("badpass", "nocert", "noauth"):
            assert wait_up(base, name, "0") == "0", name
        # 401 for the wrong password, the handshake for the missing certificate
        targets = query_targets(base)
        assert "401" in targets["badpass"] and "401" in targets["noauth"]
        # TLS 1.3: the refused client certificate ends the connection after the handshake (EOF)
        assert "401" not in targets["nocert"]
        assert any(w in targets["nocert"].lower() for w in ("eof", "tls", "certificate", "reset")), targets


def targets(base: str) -> list[dict]:
    with urllib.request.urlopen(f"{base}/api/v1/targets", timeout=5) as r:
        return json.load(r)["data"]["activeTargets"]


def query_targets(base: str) -> dict[str, str]:
    return {t["labels"]["job"]: t.get("lastError", "") for t in targets(base)}


def test_sighup_certificate_rotation_is_seen_by_the_next_scrape(prometheus, tmp_path):
    trusted, untrusted = make_ca(tmp_path, "trusted"), make_ca(tmp_path, "untrusted")
    bad = make_cert(untrusted, tmp_path, "expired-soon")
    good = make_cert(trusted, tmp_path, "renewed")
    config = write_web_config(tmp_path / "web.yml", pair=bad)
    with TLSExporter(*CORE, f"--web.config.file={config}", ctx=client_context(untrusted)) as e:
        base = prometheus([job("rotate", e.port, trusted, None, None)])
        assert wait_up(base, "rotate", "0") == "0"  # serves a certificate Prometheus does not trust
        assert "certificate" in query_targets(base)["rotate"]
        write_web_config(config, pair=good)
        e.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "trigger=SIGHUP" not in e.log():
            assert time.monotonic() < deadline, e.log()
            time.sleep(0.05)
        reloaded = time.time()
        # the first scrape that starts after the reload gets the renewed certificate
        target = first_scrape_after(base, "rotate", reloaded)
        assert target["health"] == "up" and not target["lastError"], target
        assert wait_up(base, "rotate", "1") == "1"


def first_scrape_after(base: str, name: str, since: float, timeout: float = 10) -> dict:
    """The job's target as /api/v1/targets shows it once its last scrape started after `since`
    (polled every 0.1 s, scrape interval 1 s: that scrape is the first one after `since`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        (target,) = [t for t in targets(base) if t["labels"]["job"] == name]
        # RFC 3339 with nanoseconds: Python's fromisoformat takes at most microseconds
        started = re.sub(r"(\.\d{6})\d+", r"\1", target["lastScrape"]).replace("Z", "+00:00")
        if datetime.datetime.fromisoformat(started).timestamp() > since:
            return target
        time.sleep(0.1)
    raise AssertionError(f"no scrape of {name} within {timeout}s")
