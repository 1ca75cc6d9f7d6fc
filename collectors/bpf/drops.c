// SPDX-License-Identifier: GPL-2.0
// Count freed-as-dropped skbs by the kernel's drop reason (tracepoint skb:kfree_skb).
//
// RULE: programs here read only tracepoint arguments (args->...), never kernel structs.
// bcc compiles against whatever header tree it finds (often another kernel version, see
// scripts/kernel-headers.sh). A struct laid out by those headers can differ from the running
// kernel's without any error, and the program would read garbage. Tracepoint arguments are
// different: bcc builds the `args` layout from the running kernel's tracefs format file at
// compile time, so they are always right.
//
// The reason's numeric value is the running kernel's; its name comes from the same format
// file (collectors/ebpf_drops.py), never from the headers' enum, whose numbering changes
// between kernel versions. The header is included only because bcc's generated `args`
// struct names the type `enum skb_drop_reason`.
#if __has_include(<net/dropreason.h>)
#include <net/dropreason.h>
#else
#include <linux/skbuff.h>
#endif

// The kernel's table (~130 reasons in 6.18) indexes an array; values outside it (subsystem
// reasons, e.g. mac80211's, carry high bits) go to a hash. As in drops.bpf.c.
#define DENSE_REASONS 256
#define MAX_REASONS 1024

// Per-CPU values: every CPU counts in its own copy, no atomics, no cache-line bouncing; the
// collector sums the copies of both maps.
BPF_PERCPU_ARRAY(drops, u64, DENSE_REASONS);
BPF_PERCPU_HASH(drops_high, u32, u64, MAX_REASONS);

TRACEPOINT_PROBE(skb, kfree_skb)
{
    u32 reason = args->reason;
    if (reason < DENSE_REASONS) {
        u64 *dense = drops.lookup(&reason);
        if (dense)
            *dense += 1;  // this CPU's copy; tracing programs never nest on one CPU
        return 0;
    }
    u64 *count = drops_high.lookup(&reason);
    if (count) {
        *count += 1;  // this CPU's copy; tracing programs never nest on one CPU
    } else {
        u64 one = 1;  // sets this CPU's copy only; another CPU's insert cannot erase it
        drops_high.update(&reason, &one);
    }
    return 0;
}
