"""The kernel lab's tests: guest/ runs only inside the lab's guest (KERNELLAB_GUEST=1, set by
guest_init.sh); test_kernel_lab.py, which boots the guest, runs only outside it."""

import os

IN_GUEST = os.environ.get("KERNELLAB_GUEST") == "1"
collect_ignore = ["test_kernel_lab.py"] if IN_GUEST else ["guest"]


def pytest_terminal_summary(terminalreporter):
    """The lab's wall time and the guest's own test summary, in the outer run's output."""
    if IN_GUEST:
        return
    from tests.kernellab.test_kernel_lab import RESULT

    result = RESULT.get("guest")
    if result is None:
        return
    terminalreporter.section("kernel lab")
    terminalreporter.write_line(
        f"{result.release} under qemu ({result.accel}): wall time "
        f"{result.wall:.1f} s, guest pytest exit status {result.returncode}"
    )
    lines = result.output.splitlines()
    start = next((i for i, line in enumerate(lines) if "short test summary info" in line), None)
    for line in lines[start:] if start is not None else lines[-5:]:
        terminalreporter.write_line(f"guest: {line}")
