"""virtualization collector on the real machine: a Firecracker KVM guest (no DMI, `hypervisor`
CPU flag, ACPI tables from Firecracker, /.dockerenv in its root filesystem, PID 1's cgroups all
'/', a kernel without module support). And the DaemonSet's situation: the exporter in its own PID
namespace (like a pod) must describe the node through the host's /proc, not itself."""

from __future__ import annotations

import json
import os
import sys
import tempfile

from tests.helpers import ROOT, Exporter, need_root, need_tool, run, value

PROBE = """
import json, sys
from collectors.virtualization import detect, read_facts
from exporter.contract import Paths
print(json.dumps({name: detect(read_facts(Paths(procfs=procfs)))[:2]
                  for name, procfs in (("own", "/proc"), ("host", sys.argv[1]))}))
"""


def test_this_machine_is_a_firecracker_guest_without_module_support():
    need_root()  # the ACPI tables are readable by root only
    with Exporter("--collector.disable-defaults", "--collector.virtualization") as e:
        m = e.scrape()
    assert value(m, "netstack_virtualization_info", type="firecracker", role="guest") == 1
    # this kernel is built without loadable modules (no /proc/modules)
    assert not os.path.exists("/proc/modules")
    assert value(m, "netstack_kernel_modules_loadable", reason="no_module_support") == 0


def test_in_a_pid_namespace_the_host_proc_describes_the_node():
    need_root()
    need_tool("unshare", "util-linux")
    with tempfile.TemporaryDirectory(prefix="nse-virt-") as tmp:
        host_proc = os.path.join(tmp, "host-proc")
        os.mkdir(host_proc)
        # New PID and mount namespaces: the host's /proc bind-mounted aside first (as the
        # DaemonSet's /host/proc), then a /proc of the new PID namespace, where we are PID 1.
        script = (
            f"mount --bind /proc {host_proc} && mount -t proc proc /proc && "
            f"exec {sys.executable} -c '{PROBE}' {host_proc}"
        )
        out = run(
            ["unshare", "--pid", "--fork", "--mount", "--propagation", "private", "sh", "-c", script],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
    views = json.loads(out.stdout)
    assert views["host"] == ["firecracker", "guest"]
    assert views["own"][1] == "container"  # its own /proc: a PID namespace without kthreadd
