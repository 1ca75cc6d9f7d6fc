"""The kernel lab: Debian's 6.1 kernel in qemu running pytest selections (docs/kernel-lab.md)."""
