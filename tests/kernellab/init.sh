#!/bin/busybox sh
# Stage 1, PID 1 of the kernel lab's initramfs: load the virtio/9p/overlay modules, mount the
# host's root read-only over 9p with a tmpfs overlay on top, mount the writable result share, and
# switch_root into stage 2 (guest_init.sh, from the project's own checkout on that root).
# switch_root, not chroot: the kernel runs /sbin/modprobe for module autoload in init's root.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

fail() {
    echo "kernellab init: $*"
    echo o > /proc/sysrq-trigger
    sleep 10
    poweroff -f
}

for m in /modules/*.ko; do
    insmod "$m" || fail "insmod $m failed"
done
opts=trans=virtio,version=9p2000.L,msize=262144
mount -t 9p -o "$opts,ro,cache=loose" hostroot /lower || fail "cannot mount the host's root"
mount -t tmpfs -o mode=0755 tmpfs /overlay || fail "tmpfs"
mkdir /overlay/upper /overlay/work
mount -t overlay overlay -o lowerdir=/lower,upperdir=/overlay/upper,workdir=/overlay/work /newroot \
    || fail "cannot mount the overlay"
mkdir -p /newroot/kernellab
mount -t 9p -o "$opts" labout /newroot/kernellab || fail "cannot mount the result share"
. /newroot/kernellab/job
stage2="$KERNELLAB_PROJECT/tests/kernellab/guest_init.sh"
[ -f "/newroot$stage2" ] || fail "no $stage2 on the host's root"
for fs in proc sys dev; do
    mount --move "/$fs" "/newroot/$fs"
done
exec switch_root /newroot /bin/sh "$stage2"
