"""The per-token KLD sketch: its stated error bound against exact nearest-rank percentiles, and the
summary helpers (standard errors, the paired ln PPL ratio)."""

from __future__ import annotations

import math

import pytest
import torch

from pplgate.protocol.kld_stats import (
    MAX_VALUE,
    MIN_VALUE,
    PERCENTS,
    KldSketch,
    ln_ratio_and_err,
    percent_key,
    std_err,
)

ALL_PERCENTS = (*PERCENTS, 0.0, 0.01, 25.0, 33.3, 75.0, 99.99, 100.0)


def exact_percentile(sorted_values: list[float], percent: float) -> float:
    """Nearest rank: the smallest value with at least ``percent``% of the values at or below it."""
    return sorted_values[max(1, math.ceil(percent / 100 * len(sorted_values))) - 1]


def within_bound(got: float, exact: float, sketch: KldSketch) -> bool:
    if exact >= MIN_VALUE:
        return abs(got - exact) <= sketch.rel_error * exact * (1 + 1e-9)
    return abs(got - exact) <= max(MIN_VALUE, -sketch.min)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_percentiles_are_within_the_stated_relative_error(seed) -> None:
    g = torch.Generator().manual_seed(seed)
    values = torch.exp(torch.randn(50_000, generator=g, dtype=torch.float64) * 4 - 5)  # ~1e-10 .. 1e4
    values[:500] = 0.0
    values[500:600] = -3e-8  # fp32 roundoff below zero
    sketch = KldSketch()
    for part in values.split(7_777):  # added in pieces, as the engine does per chunk
        sketch.add(part.float() if seed == 1 else part)
    exact = sorted((values.float().double() if seed == 1 else values).tolist())
    assert sketch.n == len(exact) and sketch.min == exact[0] and sketch.max == exact[-1]
    got = sketch.percentiles(ALL_PERCENTS)
    for p in ALL_PERCENTS:
        assert within_bound(got[percent_key(p)], exact_percentile(exact, p), sketch), p


def test_small_runs_and_repeated_values() -> None:
    sketch = KldSketch()
    sketch.add(torch.tensor([0.5, 0.5, 0.5, 2.0]))
    assert sketch.percentile(50) == pytest.approx(0.5, rel=sketch.rel_error)
    assert sketch.percentile(75) == pytest.approx(0.5, rel=sketch.rel_error)
    assert sketch.percentile(76) == pytest.approx(2.0, rel=sketch.rel_error)
    assert sketch.percentile(100) == 2.0  # clamped to the exact max
    assert sketch.percentile(0) == 0.5  # the exact min
    assert sketch.percentile(1) == 0.5


def test_zeros_report_zero_and_huge_values_report_the_exact_max() -> None:
    sketch = KldSketch()
    sketch.add(torch.zeros(10))
    assert sketch.percentiles() == {percent_key(p): 0.0 for p in PERCENTS}
    sketch.add(torch.tensor([MAX_VALUE * 10]))
    assert sketch.percentile(100) == MAX_VALUE * 10


def test_memory_does_not_grow_with_the_number_of_values() -> None:
    sketch = KldSketch()
    size = sketch.counts.numel()
    sketch.add(torch.rand(200_000))
    assert sketch.counts.numel() == size < 25_000
    assert sketch.n == 200_000


def test_bad_use_is_an_error() -> None:
    with pytest.raises(ValueError, match="empty"):
        KldSketch().percentile(50)
    s = KldSketch()
    s.add(torch.ones(3))
    with pytest.raises(ValueError, match=r"\[0, 100\]"):
        s.percentile(101)
    with pytest.raises(ValueError, match="rel_error"):
        KldSketch(rel_error=0)


def test_std_err_and_the_paired_ln_ratio() -> None:
    assert std_err([1.0]) is None
    assert std_err([1.0, 3.0]) == pytest.approx(math.sqrt(2.0) / math.sqrt(2.0))
    ln, err = ln_ratio_and_err([2.0, 3.0, 4.5], [1.0, 2.5, 4.0])
    assert ln == pytest.approx((1.0 + 0.5 + 0.5) / 3)
    assert err == pytest.approx(std_err([1.0, 0.5, 0.5]))
    assert ln_ratio_and_err([2.0], [1.0]) == (1.0, None)
    assert [percent_key(p) for p in PERCENTS] == ["99.9", "99", "95", "90", "50", "10", "5", "1"]
