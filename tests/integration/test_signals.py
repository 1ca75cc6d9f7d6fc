"""Every signal a user may send: SIGHUP reloads (and says so), the others shut down cleanly,
removing the fsync probe file; a signal during start-up is a quiet exit, never a traceback."""

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.helpers import ROOT, free_port, stop_process

SHUTDOWN = [signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2]


def start(tmp_path):
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "exporter",
            f"--web.listen-address=127.0.0.1:{port}",
            "--collector.disable-defaults",
            "--collector.cpu",
            "--collector.fsync",
            f"--collector.fsync.directory={tmp_path}",
            "--collector.fsync.writes=4",
        ],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    return proc


def wait_for_probe_file(tmp_path, proc, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(p.name.startswith(".netstack") for p in tmp_path.iterdir()):
            return
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.05)
    raise AssertionError("no probe file appeared")


@pytest.mark.parametrize("sig", SHUTDOWN, ids=lambda s: s.name)
def test_shutdown_signals_exit_cleanly_and_remove_the_probe_file(tmp_path, sig):
    proc = start(tmp_path)
    try:
        wait_for_probe_file(tmp_path, proc)
        time.sleep(0.3)  # past start-up: the event loop's handlers are in place
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=15)
    finally:
        stop_process(proc, 5)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert f"signal={sig.name}" in err and "shutting down" in err
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".netstack")]


def test_sighup_says_what_it_reloads_and_keeps_serving(tmp_path):
    proc = start(tmp_path)
    try:
        wait_for_probe_file(tmp_path, proc)
        time.sleep(0.3)
        proc.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=15)
    finally:
        stop_process(proc, 5)
    assert "SIGHUP" in err and "reload" in err and proc.returncode == 0


def wait_for_our_handlers(proc, timeout=20):
    """Until the process catches SIGUSR2: our first instruction has run (before that it is the
    interpreter's own start-up, where CPython itself decides what a signal does)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = open(f"/proc/{proc.pid}/status").read()
        caught = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt")), 16)
        if caught >> (signal.SIGUSR2 - 1) & 1:
            return
        time.sleep(0.001)
    raise AssertionError("the exporter never installed its signal handlers")


@pytest.mark.parametrize("delay", [0.0, 0.02, 0.05, 0.15])
def test_a_signal_during_startup_is_a_quiet_exit(tmp_path, delay):
    proc = start(tmp_path)
    wait_for_our_handlers(proc)
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=15)
    finally:
        stop_process(proc, 5)
    assert "Traceback" not in err, err
    assert proc.returncode in (0, 130, -signal.SIGINT), (proc.returncode, err)
    assert os.path.isdir(tmp_path)
