"""The live-tensor peak counter against known answers (sizes of tensors made by hand)."""
from __future__ import annotations

import torch

from diffloc.bench_memory import LiveTensorPeak, median_peak, mem_figures, peak_bytes

MiB = 2**20


def _peak(fn) -> int:
    mode = LiveTensorPeak()
    with mode:
        fn()
    return mode.peak


def test_peak_is_the_largest_simultaneous_sum():
    def fn():
        a = torch.empty(MiB, dtype=torch.uint8)
        b = torch.empty(2 * MiB, dtype=torch.uint8)
        del a
        c = torch.empty(MiB, dtype=torch.uint8)  # a's bytes were freed: 3 MiB at most, never 4
        return b, c

    assert _peak(fn) == 3 * MiB


def test_views_count_once_and_frees_are_seen():
    def fn():
        for _ in range(5):
            a = torch.zeros(MiB, dtype=torch.uint8)
            v = a.view(1024, 1024)[:10]  # same storage
            del a, v

    assert _peak(fn) == MiB


def test_tensors_saved_for_backward_stay_counted_until_backward():
    x = torch.ones(MiB // 4, requires_grad=True)  # made outside: not counted

    def fn():
        y = x.exp()  # exp saves its output for backward
        s = y.sum()
        del y  # the graph still holds y's storage
        w = torch.empty(MiB, dtype=torch.uint8)
        s.backward()
        return w

    # y (held by the graph) and w live together: 2 MiB; were y dropped at `del`, 1 MiB
    assert _peak(fn) >= 2 * MiB
    out = peak_bytes(lambda: torch.ones(MiB // 4).exp())
    assert out["tensors"] == 2 * MiB  # ones (1 MiB) and its exp (1 MiB) at once


def test_median_peak_is_the_median_of_each_measure():
    runs = iter([{"tensors": 5, "rss": 40}, {"tensors": 1, "rss": 10}, {"tensors": 3, "rss": 30}])
    assert median_peak(lambda: None, 3, measure=lambda fn: next(runs)) == {"tensors": 3, "rss": 30}
    no_rss = iter([{"tensors": 4, "rss": None}, {"tensors": 2, "rss": None}])
    assert median_peak(lambda: None, 2, measure=lambda fn: next(no_rss)) == {"tensors": 3, "rss": None}


def test_mem_figures_by_hand():
    got = mem_figures("sweep", {"tensors": 3 * MiB, "rss": 9 * MiB}, {"tensors": 2 * MiB, "rss": None})
    assert got == {"ratio": 1.5, "mb": {"sweep": 3.0, "plain": 2.0}, "rss_mb": {"sweep": 9.0, "plain": None}}
    # a plain call holding nothing: the ratio is over 1 byte, not a division by zero
    assert mem_figures("x", {"tensors": 7, "rss": None}, {"tensors": 0, "rss": None})["ratio"] == 7.0
