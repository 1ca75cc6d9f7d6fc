// SPDX-License-Identifier: GPL-2.0
// CO-RE twin of drops.c (the bcc program): count freed-as-dropped skbs by the kernel's drop
// reason. Same maps (per-CPU array indexed by reason, per-CPU hash for larger values), so the
// collector reads either.
//
// A raw tracepoint on kfree_skb: its arguments are TP_PROTO's as u64 slots, and the reason is
// argument 2 from 5.17 on (skb, location, reason[, rx_sk since 6.11]). On an older kernel the
// tracepoint has two arguments and the kernel refuses to attach a program that reads a third
// (EINVAL), which the collector reports. No kernel struct is read: no CO-RE relocation, no
// kernel BTF needed. The reason's value is the running kernel's; its name comes from the
// kfree_skb tracefs format (collectors/ebpf_drops.py), never from vmlinux.h's enum.

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

#define DENSE_REASONS 256  // as in drops.c: the kernel's own table (~130 reasons in 6.18)
#define MAX_REASONS 1024   // values outside it: subsystem reasons carry high bits (mac80211's)

// Per-CPU values: every CPU counts in its own copy, no atomics, no cache-line bouncing; the
// collector sums the copies. The kernel's reasons index an array (a lookup is an address
// computation, ~70 ns cheaper per drop than a hash here, bench/README.md); the rest go to a hash.
struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, DENSE_REASONS);
    __type(key, __u32);
    __type(value, __u64);
} drops SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_HASH);
    __uint(max_entries, MAX_REASONS);
    __type(key, __u32);
    __type(value, __u64);
} drops_high SEC(".maps");

SEC("raw_tp/kfree_skb")
int BPF_PROG(tracepoint__skb__kfree_skb, void *skb, void *location, unsigned int reason)
{
    __u32 key = reason;
    if (key < DENSE_REASONS) {
        __u64 *dense = bpf_map_lookup_elem(&drops, &key);
        if (dense)
            *dense += 1;  // this CPU's copy; tracing programs never nest on one CPU
        return 0;
    }
    __u64 *count = bpf_map_lookup_elem(&drops_high, &key);
    if (count) {
        *count += 1;  // this CPU's copy; tracing programs never nest on one CPU
    } else {
        __u64 one = 1;  // sets this CPU's copy only; another CPU's insert cannot erase it
        bpf_map_update_elem(&drops_high, &key, &one, BPF_ANY);
    }
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
