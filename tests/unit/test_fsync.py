"""fsync collector: pure parsing and bookkeeping on fixture files (no disk probes here)."""

from __future__ import annotations

import errno
import math
import time

import pytest

from collectors.fsync import (
    BUCKETS,
    ETCD_WAL_BUCKETS,
    REASONS,
    FsyncCollector,
    Histogram,
    error_reason,
    find_mount,
    nearest_rank_quantiles,
    parse_mountinfo,
    parse_uevent_devname,
)
from exporter.cli import ConfigError, parse_config
from exporter.contract import Context, ParseError, Paths
from tests.helpers import FIXTURES, collector_metrics, samples

FIX = FIXTURES / "fsync"


def mounts():
    return parse_mountinfo((FIX / "proc/self/mountinfo").read_text())


def test_mountinfo_fields_and_optional_tags():
    ms = mounts()
    assert len(ms) == 14
    root = next(m for m in ms if m.mount_point == "/")
    assert (root.major, root.minor, root.fstype, root.source) == (259, 2, "ext4", "/dev/nvme0n1p2")
    # three optional fields (shared, master, propagate_from) before the separator
    overlay = next(m for m in ms if m.fstype == "overlay")
    assert overlay.source == "overlay" and overlay.mount_point.endswith("/4e1a/rootfs")


def test_mountinfo_octal_escapes_are_decoded():
    assert any(m.mount_point == "/mnt/data disk" for m in mounts())


def test_mountinfo_bad_line_names_file_and_line():
    with pytest.raises(ParseError, match=r"mountinfo\.truncated:2: not a mountinfo line"):
        parse_mountinfo((FIX / "mountinfo.truncated").read_text(), "mountinfo.truncated")


@pytest.mark.parametrize(
    "path, want",
    [
        ("/var/lib/etcd", (259, 5)),
        ("/var/lib/etcd/member/wal", (259, 5)),
        ("/var/lib/etcdbackup", (259, 2)),  # a string prefix is not a path prefix
        ("/", (259, 2)),
        ("/mnt/data disk/probe", (253, 0)),
        ("/var/lib/kubelet/pods", (0, 81)),  # two mounts on one point: the later is on top
        ("/var/lib/kubelet/pods/1b2f/volumes/kubernetes.io~empty-dir/cache", (0, 61)),
    ],
)
def test_find_mount_longest_path_prefix(path, want):
    m = find_mount(mounts(), path)
    assert (m.major, m.minor) == want


def test_uevent_devname():
    assert parse_uevent_devname((FIX / "sys/dev/block/259:5/uevent").read_text()) == "nvme1n1p1"
    assert parse_uevent_devname("MAJOR=7\nMINOR=0\n") is None


@pytest.mark.parametrize(
    "directory, device, fstype",
    [
        ("/var/lib/etcd", "nvme1n1p1", "xfs"),
        ("/mnt/data disk", "dm-0", "ext4"),  # device-mapper: kernel name, as diskstats
        ("/var/lib/kubelet/pods", "scratch", "tmpfs"),  # no block device: the mount source
        ("/mnt/nfs", "198.18.0.10:/export", "nfs4"),
    ],
)
def test_labels_from_fixture_tree(directory, device, fstype):
    c = FsyncCollector(
        Context(Paths(procfs=str(FIX / "proc"), sysfs=str(FIX / "sys")), {"directory": [directory]})
    )
    c.probe()  # resolves labels; probes nothing yet
    got = samples(collector_metrics(c), "netstack_fsync_duration_seconds_count", path=directory)
    assert len(got) == 1
    labels = dict(next(iter(got))[1])
    assert (labels["device"], labels["fstype"]) == (device, fstype)


def test_labels_empty_and_collector_alive_when_mountinfo_unreadable(tmp_path):
    c = FsyncCollector(
        Context(Paths(procfs=str(tmp_path), sysfs=str(tmp_path)), {"directory": ["/var/lib/etcd"]})
    )
    c.probe()
    m = collector_metrics(c)
    assert samples(m, "netstack_fsync_duration_seconds_count", device="", fstype="")


def test_nearest_rank_quantiles():
    q = nearest_rank_quantiles([0.005, 0.001, 0.004, 0.002, 0.003] * 20, (0.5, 0.9, 0.99, 1.0))
    assert q == {0.5: 0.003, 0.9: 0.005, 0.99: 0.005, 1.0: 0.005}
    q = nearest_rank_quantiles([float(i) for i in range(1, 101)], (0.5, 0.9, 0.99, 1.0))
    assert q == {0.5: 50.0, 0.9: 90.0, 0.99: 99.0, 1.0: 100.0}


def test_buckets_are_etcds_plus_sub_millisecond():
    # etcd: prometheus.ExponentialBuckets(0.001, 2, 14)
    assert ETCD_WAL_BUCKETS[0] == 0.001 and ETCD_WAL_BUCKETS[-1] == 8.192 and len(ETCD_WAL_BUCKETS) == 14
    assert BUCKETS[:3] == (0.0001, 0.00025, 0.0005)
    assert list(BUCKETS) == sorted(BUCKETS)


def test_histogram_bounds_are_inclusive_and_cumulative():
    h = Histogram()
    for v in (0.00005, 0.001, 0.0010001, 9.0):
        h.observe(v)
    cum = dict(h.cumulative())
    assert cum["0.0001"] == 1
    assert cum["0.001"] == 2  # le="0.001" includes 0.001 itself
    assert cum["0.002"] == 3
    assert cum["8.192"] == 3 and cum["+Inf"] == 4 == h.count
    assert math.isclose(h.sum, 0.00005 + 0.001 + 0.0010001 + 9.0)


@pytest.mark.parametrize(
    "code, reason",
    [
        (errno.ENOSPC, "no_space"),
        (errno.EDQUOT, "no_space"),
        (errno.EROFS, "read_only"),
        (errno.EACCES, "permission_denied"),
        (errno.EPERM, "permission_denied"),
        (errno.EIO, "io_error"),
        (errno.ENOENT, "missing_directory"),
        (errno.ENOTDIR, "missing_directory"),
        (errno.EBADF, "other"),
    ],
)
def test_error_reasons(code, reason):
    assert error_reason(OSError(code, "x")) == reason
    assert reason in REASONS


@pytest.mark.parametrize(
    "argv, env, message",
    [
        ([], {"NETSTACK_COLLECTOR_FSYNC_DIRECTORY": ""}, "at least one directory"),
        (["--collector.fsync.directory=relative/dir"], {}, "must be an absolute path"),
        (["--collector.fsync.writes=0"], {}, "writes: 0 is below the minimum 1"),
        (["--collector.fsync.block-size=0"], {}, "block-size: 0 is below the minimum 1"),
        (["--collector.fsync.timeout=0"], {}, "timeout: 0s is below the minimum"),
        (["--collector.fsync.writes=1000000"], {}, "probe file is limited to 256 MiB"),
    ],
)
def test_unusable_configuration_is_a_command_line_error(argv, env, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(argv, env, [FsyncCollector])


def test_every_reason_series_exists_before_any_error():
    c = FsyncCollector(
        Context(Paths(procfs=str(FIX / "proc"), sysfs=str(FIX / "sys")), {"directory": ["/var/lib/etcd"]})
    )
    c.probe()
    m = collector_metrics(c)
    errors = samples(m, "netstack_fsync_probe_errors_total", path="/var/lib/etcd")
    assert sorted(dict(k[1])["reason"] for k in errors) == sorted(REASONS)
    assert set(errors.values()) == {0.0}
    # nothing measured yet: no quantiles; the success timestamp is the collector's start, so that
    # a probe that never succeeds makes NetstackFsyncProbeStale fire too
    assert not samples(m, "netstack_fsync_probe_quantile_seconds")
    (since,) = samples(m, "netstack_fsync_probe_last_success_timestamp_seconds").values()
    assert abs(since - time.time()) < 60


def test_device_label_is_the_same_whether_or_not_sysfs_answers(tmp_path):
    """Issue 11: the label flipped between 'vda' (from uevent) and '/dev/vda' (mount source)."""
    with_sysfs = FsyncCollector(
        Context(Paths(procfs=str(FIX / "proc"), sysfs=str(FIX / "sys")), {"directory": ["/var/lib/etcd"]})
    )
    without = FsyncCollector(
        Context(Paths(procfs=str(FIX / "proc"), sysfs=str(tmp_path)), {"directory": ["/var/lib/etcd"]})
    )
    device, _ = with_sysfs._labels("/var/lib/etcd")
    fallback, _ = without._labels("/var/lib/etcd")
    assert device == fallback == "nvme1n1p1"


def test_an_oversized_uevent_is_logged_once_and_the_label_falls_back(tmp_path, caplog):
    """A uevent past the read limit (a ParseError, not an OSError) must not crash the probe."""
    import shutil

    sysfs = tmp_path / "sys"
    shutil.copytree(FIX / "sys", sysfs)
    for uevent in sysfs.rglob("uevent"):
        uevent.write_text("DEVNAME=x\n" * 200_000)  # ~2 MiB
    c = FsyncCollector(
        Context(Paths(procfs=str(FIX / "proc"), sysfs=str(sysfs)), {"directory": ["/var/lib/etcd"]})
    )
    assert c._labels("/var/lib/etcd")[0] == "nvme1n1p1"  # the mount source, as without sysfs
    c._labels("/var/lib/etcd")
    assert [r.getMessage() for r in caplog.records].count("fsync cannot read the device name") == 1
