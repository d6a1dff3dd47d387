"""Statistics of a reference-vs-model comparison: a bounded-memory sketch of the per-token KLD
distribution (percentiles without keeping every value) and the summary over windows.

**Sketch error bound.** :class:`KldSketch` is a logarithmic histogram (DDSketch-style): bucket ``i``
holds the values in ``(γ^(i-1), γ^i]`` with ``γ = (1+α)/(1-α)`` and reports them as ``2γ^i/(γ+1)``,
which is within a relative ``α`` of every value in the bucket. A percentile ``P`` is the
nearest-rank order statistic ``x_(k)``, ``k = ceil(P/100 · n)`` (the smallest value with at least
``P%`` of the values at or below it); the sketch finds the bucket holding ``x_(k)`` exactly (integer
counts) and returns its representative clamped to the exact ``[min, max]``, so for ``x_(k)`` in
``[MIN_VALUE, MAX_VALUE]``: ``|reported - x_(k)| <= α · x_(k)`` (``α`` = :data:`REL_ERROR`, 0.1%).
Values below :data:`MIN_VALUE` (zero, and fp32 roundoff just below zero) share one bucket reported as
0 clamped to the exact ``[min, max]``, so there the absolute error is at most ``MIN_VALUE`` or the size
of the most negative roundoff; values above :data:`MAX_VALUE` are reported as the exact maximum. The
0th and 100th percentiles (ranks 1 and n) are the exact minimum and maximum.
Memory: :attr:`KldSketch.n_buckets` int64 counters (~20,700, 166 KB), whatever the number of tokens.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

REL_ERROR = 1e-3
MIN_VALUE = 1e-12
MAX_VALUE = 1e6
# the percentiles reported, in llama.cpp's order (its "KLD" block): high tail, median, low tail
PERCENTS = (99.9, 99.0, 95.0, 90.0, 50.0, 10.0, 5.0, 1.0)


def percent_key(percent: float) -> str:
    """The JSON key of a percentile: ``99.9 -> "99.9"``, ``99.0 -> "99"``."""
    return f"{percent:g}"


class KldSketch:
    """Counts of per-token KLD values in logarithmic buckets, kept on the values' device.

    ``add(values)`` takes a 1-D tensor (any float dtype); ``percentile(P)`` answers within the bound in
    the module docstring; ``n``, ``min`` and ``max`` are exact.
    """

    def __init__(self, rel_error: float = REL_ERROR, device: torch.device | str = "cpu") -> None:
        if not 0 < rel_error < 1:
            raise ValueError(f"rel_error must be in (0, 1), got {rel_error}")
        self.rel_error = rel_error
        self.gamma = (1 + rel_error) / (1 - rel_error)
        self.log_gamma = math.log(self.gamma)
        self.lo = math.ceil(math.log(MIN_VALUE) / self.log_gamma)  # bucket index of MIN_VALUE
        self.hi = math.ceil(math.log(MAX_VALUE) / self.log_gamma)
        # [0]: below MIN_VALUE; [1 .. hi-lo+1]: the log buckets; [-1]: above MAX_VALUE
        self.n_buckets = self.hi - self.lo + 3
        self.counts = torch.zeros(self.n_buckets, dtype=torch.int64, device=device)
        self._min = torch.full((), math.inf, dtype=torch.float64, device=device)
        self._max = torch.full((), -math.inf, dtype=torch.float64, device=device)

    def add(self, values: torch.Tensor) -> None:
        """Count ``values`` (no host sync: everything stays on the device)."""
        v = values.detach().reshape(-1).to(self.counts.device, torch.float64)
        if v.numel() == 0:
            return
        idx = torch.ceil(torch.log(v.clamp(min=MIN_VALUE)) / self.log_gamma) - (self.lo - 1)
        idx = torch.where(v < MIN_VALUE, torch.zeros_like(idx), idx)
        idx = torch.where(v > MAX_VALUE, torch.full_like(idx, self.n_buckets - 1), idx)
        idx = idx.long().clamp(0, self.n_buckets - 1)
        self.counts.index_add_(0, idx, torch.ones_like(idx))  # not bincount: on CUDA it syncs with the host
        self._min = torch.minimum(self._min, v.min())
        self._max = torch.maximum(self._max, v.max())

    @property
    def n(self) -> int:
        return int(self.counts.sum())

    @property
    def min(self) -> float:
        return float(self._min)

    @property
    def max(self) -> float:
        return float(self._max)

    def _value(self, bucket: int) -> float:
        if bucket == 0:
            value = 0.0
        elif bucket == self.n_buckets - 1:
            value = self.max
        else:
            value = 2 * self.gamma ** (bucket + self.lo - 1) / (self.gamma + 1)
        return min(max(value, self.min), self.max)

    def percentile(self, percent: float) -> float:
        """The nearest-rank ``percent`` percentile, within the module's error bound."""
        return self.percentiles([percent])[percent_key(percent)]

    def percentiles(self, percents: Sequence[float] = PERCENTS) -> dict[str, float]:
        """``{percent_key(P): value}`` for each ``P`` in ``percents`` (one host copy of the counts)."""
        counts = self.counts.cpu()
        n = int(counts.sum())
        if n == 0:
            raise ValueError("the sketch is empty: no per-token values were added")
        cum = torch.cumsum(counts, 0)
        out = {}
        for p in percents:
            if not 0 <= p <= 100:
                raise ValueError(f"a percentile is in [0, 100], got {p}")
            rank = max(1, math.ceil(p / 100 * n))
            if rank in (1, n):  # the ends are exact
                out[percent_key(p)] = self.min if rank == 1 else self.max
                continue
            bucket = int(torch.searchsorted(cum, torch.tensor(rank, dtype=cum.dtype)))
            out[percent_key(p)] = self._value(bucket)
        return out


def std_err(values: Sequence[float]) -> float | None:
    """Standard error of the mean of ``values`` (sample sd / sqrt(n)); None for fewer than 2 values."""
    n = len(values)
    if n < 2:
        return None
    mean = math.fsum(values) / n
    var = math.fsum((v - mean) ** 2 for v in values) / (n - 1)
    return math.sqrt(var / n)


def mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values)


def ln_ratio_and_err(nlls_model: Sequence[float], nlls_reference: Sequence[float]) -> tuple[float, float | None]:
    """``ln(PPL(model)/PPL(reference))`` (mean of the paired per-window NLL differences) and its paired
    standard error over windows (None for one window)."""
    diffs = [m - r for m, r in zip(nlls_model, nlls_reference, strict=True)]
    return mean(diffs), std_err(diffs)
