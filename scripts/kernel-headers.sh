#!/bin/sh
# Print a kernel header directory that bcc can use (export BCC_KERNEL_SOURCE=$(...)).
#
# If the running kernel has its own headers (/lib/modules/$(uname -r)/build), print that.
# Otherwise merge Debian's split packages -- linux-headers-<ver>-common (arch-independent
# headers) and linux-headers-<ver>-<flavour> (generated config headers, arch bits) -- into one
# tree, the layout bcc expects, and print its path. Headers of another kernel version are fine
# for programs that read only tracepoint arguments (see collectors/bpf/*.c).
#
# Usage: scripts/kernel-headers.sh [DEST_ROOT]   default /var/cache/netstack-exporter/kernel-headers
# Idempotent: a finished tree (marked .complete) is reused. The tree is hard-linked (or copied)
# rather than symlinked, so it survives a host /usr/src mounted over the image's /usr/src.
set -eu

dest_root=${1:-/var/cache/netstack-exporter/kernel-headers}
release=$(uname -r)

if [ -d "/lib/modules/$release/build/include" ]; then
    echo "/lib/modules/$release/build"
    exit 0
fi

case $(uname -m) in
    x86_64) flavour=amd64 ;;
    aarch64) flavour=arm64 ;;
    *) echo "kernel-headers.sh: unsupported machine $(uname -m)" >&2; exit 1 ;;
esac

# Newest installed linux-headers-<ver>-<flavour> (e.g. linux-headers-6.1.0-56-amd64).
arch_dir=$(ls -d /usr/src/linux-headers-*-"$flavour" 2>/dev/null | sort -V | tail -n 1)
if [ -z "$arch_dir" ]; then
    # No packages here (e.g. the host's /usr/src mounted over the image's): reuse a tree made
    # earlier, at image build time.
    made=$(ls -d "$dest_root"/linux-headers-*/.complete 2>/dev/null | sort -V | tail -n 1)
    if [ -n "$made" ]; then
        dirname "$made"
        exit 0
    fi
    echo "kernel-headers.sh: no /usr/src/linux-headers-*-$flavour (apt-get install linux-headers-$flavour)" >&2
    exit 1
fi
common_dir=${arch_dir%-"$flavour"}-common
if [ ! -d "$common_dir/include" ]; then
    echo "kernel-headers.sh: $common_dir missing (linux-headers-*-common not installed?)" >&2
    exit 1
fi

dest="$dest_root/$(basename "$arch_dir")"
if [ -f "$dest/.complete" ]; then
    echo "$dest"
    exit 0
fi

mkdir -p "$dest_root"
tmp=$(mktemp -d "$dest_root/.tmp.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
# common first, then the flavour's files on top (generated/ headers, .config, Module.symvers).
for src in "$common_dir" "$arch_dir"; do
    # --remove-destination: never write through a hard link into /usr/src.
    cp -a -l "$src/." "$tmp/" 2>/dev/null || cp -a --remove-destination "$src/." "$tmp/"
done
touch "$tmp/.complete"
if [ ! -f "$dest/.complete" ]; then  # else a concurrent run finished first: keep its tree
    rm -rf "$dest"                   # an unfinished tree from an interrupted run
    mv -T "$tmp" "$dest"
fi
echo "$dest"
