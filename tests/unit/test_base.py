"""Counter bookkeeping: what a counter does with every kind of reading (docs/robustness.md)."""

import pytest

from collectors.common import MonotonicCounters, WrappingCounters, parse_counter


def feed(counter, values):
    return [counter("k", v) for v in values]


def test_u32_counters_keep_growing_across_a_wrap():
    w = WrappingCounters(32)
    assert w("k", 4_000_000_000) == 4_000_000_000
    assert w("k", 4_294_967_000) == 4_294_967_000
    assert w("k", 704) == 4_294_967_000  # held back until the next reading confirms the wrap
    assert w("k", 1000) == 4_294_967_296 + 1000  # wrapped: 296 + 1000 more events
    assert w("other", 5) == 5  # keys are independent
    assert w.rejected == 1


def test_a_real_restart_counts_from_zero_without_going_back():
    w = WrappingCounters(32)
    assert feed(w, [1000, 10, 20]) == [1000, 1000, 1020]  # module reloaded: 20 new events


def test_a_single_zero_is_a_glitch_not_a_restart():
    w = WrappingCounters(32)
    assert feed(w, [5000, 0, 5010, 5020]) == [5000, 5000, 5010, 5020]
    assert w.rejected == 1


def test_a_single_spike_is_not_adopted():
    w = WrappingCounters(32)
    assert feed(w, [1000, 3_000_000_000, 1010]) == [1000, 1000, 1010]


def test_a_confirmed_large_rise_is_adopted():
    w = WrappingCounters(32)
    assert feed(w, [0, 1_500_000_000, 1_500_000_100]) == [0, 0, 1_500_000_100]


def test_a_value_wider_than_the_counter_is_rejected():
    w = WrappingCounters(32)
    assert feed(w, [100, 1 << 32, (1 << 40), 110]) == [100, 100, 100, 110]
    assert w.rejected == 2


def test_monotonic_counters_hold_the_highest_value():
    m = MonotonicCounters()
    assert m("k", 5) == 5
    assert m("k", 3) == 5 and m.clamped == 1
    assert m("k", 7) == 7


def test_monotonic_counter_ignores_a_single_impossible_jump():
    m = MonotonicCounters()
    assert m("k", 1000, 200) == 1000
    assert m("k", 10**15, 200) == 1000 and m.rejected == 1  # a 10^15 spike: not adopted
    assert m("k", 1100, 200) == 1100  # the next good reading counts as if nothing happened


def test_monotonic_counter_adopts_a_jump_that_the_next_reading_confirms():
    m = MonotonicCounters()
    m("k", 1000, 200)
    assert m("k", 50_000, 200) == 1000
    assert m("k", 50_100, 200) == 50_100


@pytest.mark.parametrize(
    "text,base,maximum",
    [("-1", 10, 2**64), ("1" * 400, 10, 2**64), ("100000000", 16, 2**32 - 1), ("x", 10, 10)],
)
def test_counters_out_of_their_width_are_not_numbers(text, base, maximum):
    with pytest.raises(ValueError):
        parse_counter(text, base, maximum)
