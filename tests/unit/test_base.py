from collectors.common import MonotonicCounters, WrappingCounters


def test_u32_counters_keep_growing_across_a_wrap():
    w = WrappingCounters(32)
    assert w("k", 4_000_000_000) == 4_000_000_000
    assert w("k", 4_294_967_000) == 4_294_967_000
    assert w("k", 704) == 4_294_967_296 + 704          # wrapped: 296 + 704 more events
    assert w("k", 1000) == 4_294_967_296 + 1000
    assert w("other", 5) == 5                            # keys are independent


def test_a_real_restart_counts_from_zero_without_going_back():
    w = WrappingCounters(32)
    w("k", 1000)
    assert w("k", 10) == 1010                            # module reloaded: 10 new events


def test_monotonic_counters_hold_the_highest_value():
    m = MonotonicCounters()
    assert m("k", 5) == 5
    assert m("k", 3) == 5 and m.clamped == 1
    assert m("k", 7) == 7
