"""Paired per-window statistics and the t quantile (no scipy in the package)."""

from __future__ import annotations

import math

import pytest
from support import need_module

from pplgate.gate.stats import PairedStats, paired_stats, t_quantile_975


def test_t_quantile_matches_scipy():
    stats = need_module("scipy.stats", "pip install scipy")
    for df in [*range(1, 60), 100, 147, 1000]:
        assert t_quantile_975(df) == pytest.approx(stats.t.ppf(0.975, df), abs=6e-4), df


def test_t_quantile_table_edges_and_limit():
    assert t_quantile_975(1) == 12.706 and t_quantile_975(30) == 2.042
    assert 2.0 < t_quantile_975(31) < 2.042
    assert t_quantile_975(10**9) == pytest.approx(1.959963984540054, abs=1e-8)
    with pytest.raises(ValueError, match="df must be >= 1, got 0"):
        t_quantile_975(0)


def test_paired_stats():
    s = paired_stats([1.1, 1.2, 1.3, 1.4], [1.0, 1.1, 1.2, 1.3])
    assert s.n == 4 and s.mean == pytest.approx(0.1) and s.n_worse == 4 and s.significant
    s = paired_stats([1.0, 1.2, 0.9, 1.1], [1.1, 1.1, 1.0, 1.0])
    assert not s.significant and s.n_worse == 2 and s.n_better == 2
    lo, hi = s.ci_low, s.ci_high
    half = 3.182 * s.sd / 2
    assert (lo, hi) == pytest.approx((s.mean - half, s.mean + half))
    one = paired_stats([1.0], [0.5])
    assert one.ci_low is None and "n/a" in one.describe()
    with pytest.raises(ValueError):
        paired_stats([1.0], [1.0, 2.0])


def test_paired_stats_needs_a_window():
    with pytest.raises(ValueError, match="at least one window"):
        paired_stats([], [])


def test_describe_says_shift_or_noise():
    shift = paired_stats([2.1, 2.2, 2.3], [2.0, 2.1, 2.2])
    assert shift.describe().startswith("paired per-window dNLL over 3 windows: mean +0.100000 nats, 95% CI [")
    assert "(systematic shift); 3/3 windows worse, 0 better, max |dNLL| 0.100000" in shift.describe()
    few = paired_stats([2.4, 2.3, 2.35], [2.3, 2.3, 2.3])  # 3 windows: the interval cannot call it noise
    assert "95% CI [-0.074217, +0.174217] (too few windows to tell a shift from noise: score more" in few.describe()
    assert "1 window" in paired_stats([1.0], [1.0]).describe()
    noise = paired_stats([2.4, 2.3, 2.35, 2.3, 2.25, 2.3, 2.3, 2.32], [2.3] * 8)
    assert "(consistent with noise); 3/8 windows worse, 1 better" in noise.describe()


def test_a_large_regression_over_two_windows_never_reads_as_noise():
    """+147% in PPL over 2 windows once read "consistent with noise"; the interval is too wide to say either."""
    s = paired_stats([3.9, 3.0], [2.8, 2.3])
    assert not s.significant and "consistent with noise" not in s.describe()
    assert "too few windows to tell a shift from noise" in s.describe()


def test_rounding_step_counts_neither_way():
    s = paired_stats([1.0000005, 0.9999995, 1.1], [1.0, 1.0, 1.0])
    assert (s.n_worse, s.n_better) == (1, 0) and s.max_abs == pytest.approx(0.1)


def test_dict_round_trip():
    s = paired_stats([2.4, 2.3, 2.35], [2.3, 2.3, 2.3])
    d = s.to_dict()
    assert d["significant"] is False and set(d) == {*PairedStats.__dataclass_fields__, "significant"}
    assert PairedStats.from_dict(d) == s
    partial = PairedStats.from_dict({"n": 2, "mean": 0.5, "n_worse": 2})
    assert (partial.sd, partial.n_better, partial.max_abs, partial.ci_low) == (0.0, 0, 0.0, None)
    assert not partial.significant and math.isfinite(partial.mean)


def test_exp_of_a_huge_mean_nll_is_inf_not_an_overflow_error():
    from pplgate.gate.stats import MAX_EXP_ARG, describe_ppl, mean, ppl_of, safe_exp

    assert 709.78 < MAX_EXP_ARG < 709.79 and safe_exp(709.0) == math.exp(709.0) and safe_exp(710.0) == math.inf
    assert ppl_of([800.0, 900.0]) == math.inf and ppl_of([1.0, 3.0]) == math.exp(2.0)
    assert describe_ppl(math.inf, [800.0, 900.0]) == "inf (mean NLL 850 nats: exp overflows)"
    assert describe_ppl(24.1454449) == "24.145445"
    assert mean([1e308, 1e308]) == math.inf  # math.fsum raises OverflowError here
    assert math.isnan(mean([math.inf, -math.inf]))  # math.fsum raises ValueError here


def test_paired_stats_of_huge_windows_does_not_raise():
    p = paired_stats([1e200, 3e200, 2e200], [0.0, 0.0, 0.0])  # (x - mean) ** 2 raised OverflowError
    assert p.mean == 2e200 and p.sd == math.inf and p.n_worse == 3 and "systematic" not in p.describe()
