"""python -m tests.kernellab [--timeout S] [--memory MiB] [--cpus N] [--command] [ARGS...]

Boots the lab's guest and runs `python -m pytest ARGS` in it from the project's root (with
--command, ARGS is the command instead, e.g. `python bench/bench_ipvs_guest.py`). Prints the
guest's output and the lab's wall time; exits with the guest command's exit status."""

import argparse
import sys

from .lab import LabError, boot


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.kernellab",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--timeout", type=float, default=900, help="seconds for the whole run")
    parser.add_argument("--memory", type=int, default=3072, help="guest memory in MiB")
    parser.add_argument("--cpus", type=int, default=None, help="guest CPUs (default: host's, <= 4)")
    parser.add_argument("--command", action="store_true", help="ARGS is a command, not pytest arguments")
    parser.add_argument("--console", action="store_true", help="also print the serial console")
    parser.add_argument("args", nargs=argparse.REMAINDER)
    opts = parser.parse_args()
    args = opts.args[1:] if opts.args[:1] == ["--"] else opts.args
    if opts.command and args and args[0] == "python":
        args[0] = sys.executable
    try:
        result = boot(
            args if not opts.command else [],
            timeout=opts.timeout,
            memory_mb=opts.memory,
            cpus=opts.cpus,
            command=args if opts.command else None,
        )
    except LabError as e:
        print(f"kernellab: {e}", file=sys.stderr)
        return 2
    if opts.console or result.returncode < 0:
        print(result.console)
    print(result.output, end="" if result.output.endswith("\n") else "\n")
    print(
        f"kernellab: {result.release} ({result.accel}): exit status {result.returncode}, "
        f"wall time {result.wall:.1f} s",
        file=sys.stderr,
    )
    return result.returncode if result.returncode >= 0 else 2


if __name__ == "__main__":
    sys.exit(main())
