"""The result object of one reference-vs-model comparison, serialisable to JSON.

Per-window vectors (``window_*``, one entry per window, in window order) are what a gate rule or a
paired per-window report reads; :meth:`ComparisonResult.summary_stats` is the flat dict of scalars
(mean KLD, agreement, Δp, ln PPL ratio, percentiles) that bound and tolerance rules compare.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from pplgate.protocol.result import PerplexityResult

# fields of a PerplexityResult that a comparison shares with both of its models' results
_SHARED = (
    "n_tokens",
    "n_windows",
    "n_windows_total",
    "tail_tokens",
    "seqlen",
    "batch_size",
    "bos_added",
    "tokenizer_name",
    "tokenizer_sha256",
    "device",
    "dataset_sha256",
    "dataset_source",
    "canonical",
    "partial",
    "wall_time_s",
    "tokens_per_s",
    "peak_memory_bytes",
)


@dataclass
class ComparisonResult:
    """Everything one comparison measured (field names are the JSON keys).

    Definitions (per scored position, the PPL's positions: logits[:-1] of each window; p = softmax of
    the reference's fp32 logits, q = the model's): KLD = Σ_v p(v)(log p(v) - log q(v)); top-1 agreement
    = [argmax p == argmax q]; Δp = q(next token) - p(next token). Each is averaged per window
    (``window_*``), then over windows (equal-length windows: the token-weighted mean).
    """

    mean_kld: float
    kld_std_err: float | None  # sd of window_klds / sqrt(n_windows); None for one window
    kld_token_std: float  # sd of the per-token KLD over all scored positions
    max_kld: float  # exact, over all positions
    kld_percentiles: dict[str, float]  # nearest-rank percentiles of per-token KLD, keyed "99.9", "99", ...
    kld_percentile_rel_error: float  # the sketch's relative error bound (see kld_stats)
    top1_agreement: float  # fraction of positions where argmax p == argmax q
    mean_delta_p: float
    rms_delta_p: float  # sqrt(mean over all positions of Δp²)
    ppl_reference: float
    ppl_model: float
    ln_ppl_ratio: float  # ln(ppl_model / ppl_reference) = mean of the paired per-window NLL differences
    ln_ppl_ratio_std_err: float | None  # paired: sd of the per-window differences / sqrt(n_windows)
    window_klds: list[float]
    window_kld_max: list[float]
    window_top1: list[float]
    window_delta_p: list[float]
    window_rms_delta_p: list[float]
    window_nlls_reference: list[float]
    window_nlls_model: list[float]
    n_positions: int  # scored positions: n_windows * (seqlen - 1)
    dtype: str  # the model's
    dtype_reference: str
    n_tokens: int
    n_windows: int
    n_windows_total: int
    tail_tokens: int
    seqlen: int
    batch_size: int
    bos_added: bool
    tokenizer_name: str
    tokenizer_sha256: str
    device: str
    dataset_sha256: str
    dataset_source: str
    canonical: bool
    partial: bool
    wall_time_s: float  # the whole pass: both models' forwards and the comparison
    tokens_per_s: float  # of the whole pass
    peak_memory_bytes: int | None
    forward_time_s: float = 0.0  # the model's own forward passes (body and head) in the pass
    forward_time_s_reference: float = 0.0  # the reference's
    forward_tokens_per_s: float = 0.0  # tokens / own forward seconds, the pass's first (warm-up) batch left out
    forward_tokens_per_s_reference: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            Path(path).write_text(text + "\n", encoding="utf-8")
        return text

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ComparisonResult:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def summary_stats(self) -> dict[str, Any]:
        """The scalars a gate rule reads (no per-window vectors)."""
        return {
            k: v
            for k, v in self.to_dict().items()
            if not k.startswith(("window_", "forward_")) and k not in _SHARED + ("extra",)
        }

    def perplexity_results(self) -> tuple[PerplexityResult, PerplexityResult]:
        """``(reference, model)`` as :class:`PerplexityResult`\\ s, from this one shared pass (no other run):
        what a session records as each model's own PPL measurement. Their ``wall_time_s`` is the model's
        own forward time in the pass and ``tokens_per_s`` its steady forward throughput (the warm-up batch
        left out), so that two models of one pass compare; the pass's time is ``extra['pass_wall_time_s']``."""
        shared = {k: getattr(self, k) for k in _SHARED if k not in ("wall_time_s", "tokens_per_s")}
        extra = {"from_comparison": True, "pass_wall_time_s": self.wall_time_s}

        ref = PerplexityResult(
            ppl=self.ppl_reference,
            window_nlls=list(self.window_nlls_reference),
            dtype=self.dtype_reference,
            extra=dict(extra),
            wall_time_s=self.forward_time_s_reference,
            tokens_per_s=self.forward_tokens_per_s_reference,
            **shared,
        )
        model = PerplexityResult(
            ppl=self.ppl_model,
            window_nlls=list(self.window_nlls_model),
            dtype=self.dtype,
            extra=dict(extra),
            wall_time_s=self.forward_time_s,
            tokens_per_s=self.forward_tokens_per_s,
            **shared,
        )
        return ref, model

    def summary(self) -> str:
        """Two lines in the spirit of llama.cpp's ``--kl-divergence`` block."""
        scope = f"{self.n_windows}/{self.n_windows_total} windows" + (" (PARTIAL)" if self.partial else "")
        pct = self.kld_percentiles
        err = "" if self.kld_std_err is None else f" ± {self.kld_std_err:.6f}"
        lnerr = "" if self.ln_ppl_ratio_std_err is None else f" ± {self.ln_ppl_ratio_std_err:.6f}"
        return (
            f"mean_kld={self.mean_kld:.6f}{err}  max={self.max_kld:.4f}  p99.9={pct.get('99.9', float('nan')):.4f}  "
            f"p99={pct.get('99', float('nan')):.4f}  median={pct.get('50', float('nan')):.6f}  "
            f"top1={100 * self.top1_agreement:.3f}%  mean_dp={100 * self.mean_delta_p:+.3f}%  "
            f"rms_dp={100 * self.rms_delta_p:.3f}%\n"
            f"ppl_reference={self.ppl_reference:.4f}  ppl_model={self.ppl_model:.4f}  "
            f"ln(ppl ratio)={self.ln_ppl_ratio:+.6f}{lnerr}  {scope}  positions={self.n_positions}  "
            f"seqlen={self.seqlen}  dtype={self.dtype_reference}/{self.dtype}  device={self.device}  "
            f"{self.wall_time_s:.1f}s"
        )
