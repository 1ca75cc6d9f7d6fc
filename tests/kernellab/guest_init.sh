#!/bin/sh
# Stage 2, PID 1 of the kernel lab's guest, on the host's root (read-only, tmpfs overlay): the
# mounts a test run needs, the kernel package's modules where modprobe looks for them, then the
# job's command with its output and exit status written to the result share; then power off.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root LANG=C.UTF-8
. /kernellab/job

# /tmp stays the host's, seen through the overlay (writes go to its tmpfs upper layer): a checkout
# under /tmp (CI clones into mktemp -d) would vanish under a tmpfs of its own.
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -p /run/netns /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
mount -t bpf bpf /sys/fs/bpf 2>/dev/null
mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null
mkdir -p "/lib/modules/$KERNELLAB_RELEASE"
mount --bind "$KERNELLAB_MODULES" "/lib/modules/$KERNELLAB_RELEASE"
ip link set lo up
hostname kernellab

export KERNELLAB_GUEST=1 PATH="$KERNELLAB_BIN:$PATH"
cd "$KERNELLAB_PROJECT"
start=$(cut -d' ' -f1 /proc/uptime)
echo "kernellab guest: $(uname -r), up ${start} s, running: $*" > /kernellab/output
timeout -k 10 "$KERNELLAB_TIMEOUT" "$@" >> /kernellab/output 2>&1
echo $? > /kernellab/rc
sync
umount /kernellab
echo o > /proc/sysrq-trigger
sleep 30
