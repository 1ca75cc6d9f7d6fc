// SPDX-License-Identifier: GPL-2.0
// CO-RE twin of softirq.c (the bcc program): NET_RX/NET_TX (or all) softirq latency, raise ->
// entry ("wait") and entry -> exit ("service"). Same maps, same index layout, same slots, so
// collectors/ebpf_softirq.py decodes either program's maps with the same code.
//
// Compiled once (scripts/build_bpf.py: clang -target bpf -O2 -g against vmlinux.h) and loaded
// unchanged on every kernel: the programs are raw tracepoints, whose arguments are the
// tracepoint's TP_PROTO arguments as u64 slots (softirq_*: the vector number, argument 0). They
// read no kernel struct, so the object carries no CO-RE relocation and libbpf needs no kernel BTF.
//
// Settings (written by the loader into .rodata before load; the verifier sees constants):
//   VEC_MASK  bit v set = record softirq vector v
//   NR_VECS   number of softirq vectors in the running kernel's table (array row count)
//   SAMPLE_EVERY  time one raise -> run of N per CPU and vector (1 = every run, exact)
// The loader also sizes `hist` and `sums` for NR_VECS, as the bcc program's defines do.
// Index of a count: ((kind * NR_VECS) + vec) * NR_SLOTS + slot; of a sum: kind * NR_VECS + vec.

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

#define KIND_WAIT 0
#define KIND_SERVICE 1
#define NR_KINDS 2
#define NR_SLOTS 65
#define MAX_VECS 32
// raised_at value of a raise seen but not timed (SAMPLE_EVERY > 1): no clock reads 2^64 - 1 ns
#define RAISED_UNTIMED 0xffffffffffffffffULL

const volatile __u32 VEC_MASK = 0;
const volatile __u32 NR_VECS = 0;
const volatile __u32 SAMPLE_EVERY = 1;

#define PERCPU_ARRAY(name, entries)                                                   \
    struct {                                                                          \
        __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);                                      \
        __uint(max_entries, entries);                                                 \
        __type(key, __u32);                                                           \
        __type(value, __u64);                                                         \
    } name SEC(".maps")

// Per CPU, per vector: when the vector was first raised since it last ran, and when it started.
PERCPU_ARRAY(raised_at, MAX_VECS);
PERCPU_ARRAY(entered_at, MAX_VECS);
// Per CPU, per vector: raises seen with none pending (one per run), to pick every SAMPLE_EVERY-th.
PERCPU_ARRAY(raises, MAX_VECS);
// log2 histograms (counts per slot) and sums, in nanoseconds, read by the collector. Declared
// for MAX_VECS; the loader shrinks them to NR_VECS rows before load.
PERCPU_ARRAY(hist, NR_KINDS * MAX_VECS * NR_SLOTS);
PERCPU_ARRAY(sums, NR_KINDS * MAX_VECS);

// Slot of a value: 0 holds only 0; slot s >= 1 holds [2^(s-1), 2^s), i.e. the bit length of v.
// The collector's bucket boundaries depend on exactly this definition (as in softirq.c).
static __always_inline __u32 slot_of(__u64 v)
{
    __u32 s = 0;
    if (v >> 32) { s += 32; v >>= 32; }
    if (v >> 16) { s += 16; v >>= 16; }
    if (v >> 8)  { s += 8;  v >>= 8; }
    if (v >> 4)  { s += 4;  v >>= 4; }
    if (v >> 2)  { s += 2;  v >>= 2; }
    if (v >> 1)  { s += 1;  v >>= 1; }
    return s + (__u32)v;
}

static __always_inline int wanted(__u32 vec)
{
    return vec < NR_VECS && vec < MAX_VECS && ((VEC_MASK >> vec) & 1);
}

static __always_inline void record(__u32 kind, __u32 vec, __u64 ns)
{
    // Plain increments are safe: the arrays are per CPU and the kernel never runs two tracing
    // programs at once on one CPU.
    __u32 idx = (kind * NR_VECS + vec) * NR_SLOTS + slot_of(ns);
    __u64 *count = bpf_map_lookup_elem(&hist, &idx);
    if (count)
        *count += 1;
    idx = kind * NR_VECS + vec;
    __u64 *sum = bpf_map_lookup_elem(&sums, &idx);
    if (sum)
        *sum += ns;
}

// Program names are the bcc program's function names: the collectors attach by those names.
// Sampling (SAMPLE_EVERY > 1): raise times one run in SAMPLE_EVERY and marks the others
// RAISED_UNTIMED; entry and exit read the clock only for a timed run, so an untimed run costs
// array lookups and no clock read. SAMPLE_EVERY == 1 is a constant the verifier prunes on.
SEC("raw_tp/softirq_raise")
int BPF_PROG(tracepoint__irq__softirq_raise, unsigned int vec)
{
    if (!wanted(vec))
        return 0;
    __u64 *ts = bpf_map_lookup_elem(&raised_at, &vec);
    // Keep the first raise: a vector raised again before it ran has waited since the first.
    if (!ts || *ts != 0)
        return 0;
    if (SAMPLE_EVERY > 1) {
        __u64 *seen = bpf_map_lookup_elem(&raises, &vec);
        if (!seen)
            return 0;
        __u64 nth = *seen;
        *seen = nth + 1;
        if (nth % SAMPLE_EVERY != 0) {
            *ts = RAISED_UNTIMED;
            return 0;
        }
    }
    *ts = bpf_ktime_get_ns();
    return 0;
}

SEC("raw_tp/softirq_entry")
int BPF_PROG(tracepoint__irq__softirq_entry, unsigned int vec)
{
    if (!wanted(vec))
        return 0;
    __u64 *raised = bpf_map_lookup_elem(&raised_at, &vec);
    if (!raised)
        return 0;
    __u64 raised_ns = *raised;
    // Sampling: an untimed run, or one whose raise was not seen, is not timed at all.
    if (SAMPLE_EVERY > 1 && (raised_ns == RAISED_UNTIMED || raised_ns == 0)) {
        *raised = 0;
        return 0;
    }
    __u64 now = bpf_ktime_get_ns();
    // No raise seen (raised before attach): no wait sample, but service time is still valid.
    if (raised_ns) {
        record(KIND_WAIT, vec, now - raised_ns);
        *raised = 0;
    }
    __u64 *entered = bpf_map_lookup_elem(&entered_at, &vec);
    if (entered)
        *entered = now;
    return 0;
}

SEC("raw_tp/softirq_exit")
int BPF_PROG(tracepoint__irq__softirq_exit, unsigned int vec)
{
    if (!wanted(vec))
        return 0;
    __u64 *entered = bpf_map_lookup_elem(&entered_at, &vec);
    if (entered && *entered) {
        record(KIND_SERVICE, vec, bpf_ktime_get_ns() - *entered);
        *entered = 0;
    }
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
