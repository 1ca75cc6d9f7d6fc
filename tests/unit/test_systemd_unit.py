"""packaging/netstack-exporter.service: systemd accepts it, and its web options name real flags."""

from __future__ import annotations

import re
import shutil
import subprocess

from exporter.cli import env_name
from tests.helpers import ROOT, need

UNIT = ROOT / "packaging" / "netstack-exporter.service"


def test_systemd_analyze_accepts_the_unit(tmp_path):
    analyze = shutil.which("systemd-analyze")
    need(analyze is not None, "needs systemd-analyze (Debian systemd)")
    unit = tmp_path / "netstack-exporter.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/netstack-exporter", "/bin/true"))
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


def test_limits_reload_and_web_config_option():
    text = UNIT.read_text()
    limit = re.search(r"^LimitNOFILE=(\d+)$", text, re.M)
    assert limit and int(limit.group(1)) >= 4096
    assert "ExecReload=/bin/kill -HUP $MAINPID" in text
    for flag in ("--web.config.file", "--web.listen-address"):
        assert env_name(flag) + "=" in text, flag
