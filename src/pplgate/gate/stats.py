"""Paired per-window statistics for the gate's failure messages (no scipy needed).

A run and its baseline score the *same* windows, so the per-window NLL differences
``d_i = nll_now_i - nll_recorded_i`` are paired observations: their mean with a
t-distribution confidence interval tells a reviewer whether a perplexity change is
systematic (the interval excludes 0) or window-level noise.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# Two-sided 95% quantiles t_{0.975, df} for df = 1..30 (standard tables, 3 decimals).
_T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip
_Z975 = 1.959963984540054
# One-sided 80% quantiles t_{0.80, df} for df = 1..30 (standard tables, 3 decimals): the power term of
# :func:`detectable_shift`.
_T80 = (
    1.376, 1.061, 0.978, 0.941, 0.920, 0.906, 0.896, 0.889, 0.883, 0.879,
    0.876, 0.873, 0.870, 0.868, 0.866, 0.865, 0.863, 0.862, 0.861, 0.860,
    0.859, 0.858, 0.858, 0.857, 0.856, 0.856, 0.855, 0.855, 0.854, 0.854,
)  # fmt: skip
_Z80 = 0.8416212335729143
# exp() of a mean NLL above this overflows a float: the perplexity is then reported as inf
MAX_EXP_ARG = math.log(sys.float_info.max)


def safe_exp(x: float) -> float:
    """``math.exp(x)``, but ``inf`` where it would overflow (a mean NLL above ~709.78 nats)."""
    return math.inf if x > MAX_EXP_ARG else math.exp(x)


def fsum(values: Sequence[float]) -> float:
    """``math.fsum``, but ``inf`` (or nan) instead of an OverflowError/ValueError beyond the float range."""
    try:
        return math.fsum(values)
    except (OverflowError, ValueError):  # an intermediate sum beyond ~1.8e308, or inf + -inf
        return sum(float(v) for v in values)


def mean(values: Sequence[float]) -> float:
    """The exact (``fsum``) mean of a non-empty list; never raises for large or infinite values."""
    return fsum(values) / len(values)


def ppl_of(window_nlls: Sequence[float]) -> float:
    """``exp(mean window NLL)``, the protocol's perplexity, ``inf`` where exp overflows."""
    return safe_exp(mean(window_nlls))


def describe_ppl(ppl: float, window_nlls: Sequence[float] | None = None) -> str:
    """``24.145445``, or for an overflowed one ``inf (mean NLL 812.4 nats, exp overflows)``."""
    if math.isfinite(ppl) or not window_nlls:
        return f"{ppl:.6f}"
    return f"{ppl:.6f} (mean NLL {mean(window_nlls):.6g} nats: exp overflows)"


def _cornish_fisher(z: float, df: int) -> float:
    """Student's t quantile from the normal quantile ``z`` (Cornish-Fisher; error < 1e-4 for df > 30)."""
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    g4 = (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160
    return z + g1 / df + g2 / df**2 + g3 / df**3 + g4 / df**4


def _t_quantile(table: tuple[float, ...], z: float, df: int) -> float:
    if df < 1:
        raise ValueError(f"df must be >= 1, got {df}")
    return table[df - 1] if df <= len(table) else _cornish_fisher(z, df)


def t_quantile_975(df: int) -> float:
    """``t_{0.975}`` of Student's t with ``df`` degrees of freedom: the exact table for df <= 30, above it
    the Cornish-Fisher expansion around the normal quantile."""
    return _t_quantile(_T975, _Z975, df)


def t_quantile_80(df: int) -> float:
    """``t_{0.80}`` of Student's t with ``df`` degrees of freedom (as :func:`t_quantile_975`)."""
    return _t_quantile(_T80, _Z80, df)


def detectable_shift(sd: float, n: int) -> float | None:
    """The smallest shift of a mean of ``n`` paired differences with standard deviation ``sd`` that a two-sided
    95% t test detects with 80% power: ``(t_{0.975,n-1} + t_{0.80,n-1}) * sd / sqrt(n)``. None for one
    window (no t interval)."""
    if n < 2:
        return None
    return (t_quantile_975(n - 1) + t_quantile_80(n - 1)) * sd / math.sqrt(n)


def sample_sd(values: Sequence[float]) -> float:
    """The sample standard deviation (n - 1); 0 for fewer than two values."""
    if len(values) < 2:
        return 0.0
    avg = mean(values)
    return math.sqrt(fsum([(x - avg) * (x - avg) for x in values]) / (len(values) - 1))


# Below this many windows a non-significant paired interval is too wide to call "noise" (t_0.975 is 12.7 at
# 2 windows, 2.4 at 8): the message says so instead.
MIN_WINDOWS_TO_JUDGE = 8


@dataclass(frozen=True)
class PairedStats:
    """Mean paired difference of per-window NLLs (current - recorded) with a 95% CI."""

    n: int
    mean: float
    sd: float
    ci_low: float | None
    ci_high: float | None
    n_worse: int
    n_better: int
    max_abs: float

    @property
    def significant(self) -> bool:
        """True when the 95% interval excludes zero (a systematic shift, not noise)."""
        return self.ci_low is not None and (self.ci_low > 0 or self.ci_high < 0)

    @property
    def verdict(self) -> str:
        """What the interval says: a shift, noise, or (few windows, an interval too wide) nothing either way."""
        if self.significant:
            return "systematic shift"
        if self.n < MIN_WINDOWS_TO_JUDGE:
            return f"too few windows to tell a shift from noise: score more (max_windows >= {MIN_WINDOWS_TO_JUDGE})"
        return "consistent with noise"

    def describe(self) -> str:
        if self.ci_low is None:
            ci = "95% CI n/a (1 window)"
        else:
            ci = f"95% CI [{self.ci_low:+.6f}, {self.ci_high:+.6f}]"
        verdict = self.verdict
        return (
            f"paired per-window dNLL over {self.n} window{'s' * (self.n != 1)}: "
            f"mean {self.mean:+.6f} nats, {ci} ({verdict}); "
            f"{self.n_worse}/{self.n} windows worse, {self.n_better} better, max |dNLL| {self.max_abs:.6f}"
        )

    def to_dict(self) -> dict:
        return {
            "n": self.n,
            "mean": self.mean,
            "sd": self.sd,
            "ci_low": self.ci_low,
            "ci_high": self.ci_high,
            "n_worse": self.n_worse,
            "n_better": self.n_better,
            "max_abs": self.max_abs,
            "significant": self.significant,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PairedStats:
        """From :meth:`to_dict`'s form (``significant`` is derived; absent spread/counts read as 0/None)."""
        defaults = {"sd": 0.0, "n_better": 0, "max_abs": 0.0, "ci_low": None, "ci_high": None}
        return cls(**{k: d.get(k, defaults.get(k)) for k in cls.__dataclass_fields__})


def paired_stats(current: Sequence[float], recorded: Sequence[float], *, eps: float = 1e-6) -> PairedStats:
    """Paired comparison of two equally long per-window NLL lists.

    Windows whose difference is within ``eps`` (the 6-decimal rounding of stored NLLs)
    count neither as worse nor as better.
    """
    if len(current) != len(recorded):
        raise ValueError(f"paired comparison needs equal lengths, got {len(current)} and {len(recorded)}")
    if not current:
        raise ValueError("paired comparison needs at least one window")
    d = [float(a) - float(b) for a, b in zip(current, recorded, strict=True)]
    n = len(d)
    avg = mean(d)
    if n > 1:
        sd = math.sqrt(fsum([(x - avg) * (x - avg) for x in d]) / (n - 1))  # x * x: inf, never OverflowError
        half = t_quantile_975(n - 1) * sd / math.sqrt(n)
        lo, hi = avg - half, avg + half
    else:
        sd, lo, hi = 0.0, None, None
    return PairedStats(
        n=n,
        mean=avg,
        sd=sd,
        ci_low=lo,
        ci_high=hi,
        n_worse=sum(x > eps for x in d),
        n_better=sum(x < -eps for x in d),
        max_abs=max(abs(x) for x in d),
    )
