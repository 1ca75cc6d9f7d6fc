// SPDX-License-Identifier: GPL-2.0
// NET_RX/NET_TX (or all) softirq latency: raise -> entry ("wait") and entry -> exit ("service").
//
// RULE: programs here read only tracepoint arguments (args->...), never kernel structs.
// bcc compiles against whatever header tree it finds (often another kernel version, see
// scripts/kernel-headers.sh). A struct laid out by those headers can differ from the running
// kernel's without any error, and the program would read garbage. Tracepoint arguments are
// different: bcc builds the `args` layout from the running kernel's tracefs format file at
// compile time, so they are always right.
//
// Compile-time defines (set by collectors/ebpf_softirq.py):
//   VEC_MASK  bit v set = record softirq vector v
//   NR_VECS   number of softirq vectors in the running kernel's table (array row count)
//   SAMPLE_EVERY  time one raise -> run of N per CPU and vector (1 = every run, exact)
//
// Histograms live in per-CPU arrays: each CPU increments its own copy without atomics or
// cache-line bouncing, and the collector sums the copies (or keeps them apart for per-cpu).
// Index of a count: ((kind * NR_VECS) + vec) * NR_SLOTS + slot; of a sum: kind * NR_VECS + vec.

#define KIND_WAIT 0
#define KIND_SERVICE 1
#define NR_KINDS 2
#define NR_SLOTS 65
#define MAX_VECS 32
// raised_at value of a raise seen but not timed (SAMPLE_EVERY > 1): no clock reads 2^64 - 1 ns
#define RAISED_UNTIMED 0xffffffffffffffffULL

// Per CPU, per vector: when the vector was first raised since it last ran, and when it started.
BPF_PERCPU_ARRAY(raised_at, u64, MAX_VECS);
BPF_PERCPU_ARRAY(entered_at, u64, MAX_VECS);
// Per CPU, per vector: raises seen with none pending (one per run), to pick every SAMPLE_EVERY-th.
BPF_PERCPU_ARRAY(raises, u64, MAX_VECS);

// log2 histograms (counts per slot) and sums, in nanoseconds, read by the collector.
BPF_PERCPU_ARRAY(hist, u64, NR_KINDS * NR_VECS * NR_SLOTS);
BPF_PERCPU_ARRAY(sums, u64, NR_KINDS * NR_VECS);

// Slot of a value: 0 holds only 0; slot s >= 1 holds [2^(s-1), 2^s), i.e. the bit length of v.
// The collector's bucket boundaries depend on exactly this definition.
static inline u32 slot_of(u64 v)
{
    u32 s = 0;
    if (v >> 32) { s += 32; v >>= 32; }
    if (v >> 16) { s += 16; v >>= 16; }
    if (v >> 8)  { s += 8;  v >>= 8; }
    if (v >> 4)  { s += 4;  v >>= 4; }
    if (v >> 2)  { s += 2;  v >>= 2; }
    if (v >> 1)  { s += 1;  v >>= 1; }
    return s + (u32)v;
}

static inline int wanted(u32 vec)
{
    return vec < NR_VECS && vec < MAX_VECS && ((VEC_MASK >> vec) & 1);
}

static inline void record(u32 kind, u32 vec, u64 ns)
{
    // Plain increments are safe: the arrays are per CPU and the kernel never runs two tracing
    // programs at once on one CPU (bpf_prog_active).
    u32 idx = (kind * NR_VECS + vec) * NR_SLOTS + slot_of(ns);
    u64 *count = hist.lookup(&idx);
    if (count)
        *count += 1;
    idx = kind * NR_VECS + vec;
    u64 *sum = sums.lookup(&idx);
    if (sum)
        *sum += ns;
}

// Sampling (SAMPLE_EVERY > 1): raise times one run in SAMPLE_EVERY and marks the others
// RAISED_UNTIMED; entry and exit read the clock only for a timed run, so an untimed run costs
// array lookups and no clock read. SAMPLE_EVERY == 1 is a constant the compiler prunes on.
TRACEPOINT_PROBE(irq, softirq_raise)
{
    u32 vec = args->vec;
    if (!wanted(vec))
        return 0;
    u64 *ts = raised_at.lookup(&vec);
    // Keep the first raise: a vector raised again before it ran has waited since the first.
    if (!ts || *ts != 0)
        return 0;
    if (SAMPLE_EVERY > 1) {
        u64 *seen = raises.lookup(&vec);
        if (!seen)
            return 0;
        u64 nth = *seen;
        *seen = nth + 1;
        if (nth % SAMPLE_EVERY != 0) {
            *ts = RAISED_UNTIMED;
            return 0;
        }
    }
    *ts = bpf_ktime_get_ns();
    return 0;
}

TRACEPOINT_PROBE(irq, softirq_entry)
{
    u32 vec = args->vec;
    if (!wanted(vec))
        return 0;
    u64 *raised = raised_at.lookup(&vec);
    if (!raised)
        return 0;
    u64 raised_ns = *raised;
    // Sampling: an untimed run, or one whose raise was not seen, is not timed at all.
    if (SAMPLE_EVERY > 1 && (raised_ns == RAISED_UNTIMED || raised_ns == 0)) {
        *raised = 0;
        return 0;
    }
    u64 now = bpf_ktime_get_ns();
    // No raise seen (raised before attach): no wait sample, but service time is still valid.
    if (raised_ns) {
        record(KIND_WAIT, vec, now - raised_ns);
        *raised = 0;
    }
    u64 *entered = entered_at.lookup(&vec);
    if (entered)
        *entered = now;
    return 0;
}

TRACEPOINT_PROBE(irq, softirq_exit)
{
    u32 vec = args->vec;
    if (!wanted(vec))
        return 0;
    u64 *entered = entered_at.lookup(&vec);
    if (entered && *entered) {
        record(KIND_SERVICE, vec, bpf_ktime_get_ns() - *entered);
        *entered = 0;
    }
    return 0;
}
