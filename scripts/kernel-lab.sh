#!/usr/bin/env bash
# Boot Debian's 6.1 kernel under qemu and run pytest (or, with --command, any command) inside it
# against this checkout and its venv; see docs/kernel-lab.md. As root, after scripts/test.sh.
#   bash scripts/kernel-lab.sh -- -q tests/kernellab/guest
#   bash scripts/kernel-lab.sh --command python bench/bench_ipvs_guest.py
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
exec .venv/bin/python -m tests.kernellab "$@"
