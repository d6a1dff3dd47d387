r"""The comparison API: :func:`evaluate_comparison` (one model) and :func:`evaluate_comparisons` (several in
one pass) against a reference on the canonical windows, returning
:class:`~pplgate.protocol.compare_result.ComparisonResult`\ s. The scoring loop and its memory formula are in
:mod:`pplgate.protocol.divergence`; the percentile sketch and its error bound in :mod:`.kld_stats`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from pplgate.errors import PerplexityOverflowError, ProtocolError
from pplgate.protocol.compare_result import ComparisonResult
from pplgate.protocol.dataset import CanonicalText
from pplgate.protocol.divergence import ForwardClock, WindowStats, compare_windows
from pplgate.protocol.engine import DEFAULT_SEQLEN, _sync, model_device, scoring_windows
from pplgate.protocol.kld_stats import PERCENTS, ln_ratio_and_err, mean, std_err
from pplgate.protocol.progress import Progress
from pplgate.protocol.tokens import TokenizedText
from pplgate.protocol.windows import perplexity, running_perplexity, tail_tokens


class _KldProgress(Progress):
    """:class:`Progress` showing the running mean KLD and the model's running PPL."""

    kld = float("nan")

    def postfix(self) -> str:
        return f"kld={self.kld:.5f} ppl={self.ppl:.4f}"


def evaluate_comparisons(
    reference,
    models: Sequence,
    tokens: TokenizedText,
    dataset: CanonicalText,
    *,
    seqlen: int = DEFAULT_SEQLEN,
    batch_size: int = 1,
    max_windows: int | None = None,
    chunk_tokens: int | None = None,
    progress: bool = True,
    labels: Sequence[str] | None = None,
    reference_label: str = "reference",
) -> list[ComparisonResult]:
    """The canonical windows of ``tokens`` scored by ``reference`` and each of ``models`` in one pass;
    one :class:`ComparisonResult` per model (each also carries the reference's PPL)."""
    labels = list(labels or [f"model {i}" for i in range(len(models))])
    windows, n_total = scoring_windows([reference, *models], tokens, seqlen, max_windows)
    n = windows.shape[0]
    device = model_device(reference)
    cuda = device.type == "cuda"
    if cuda:
        for i in range(torch.cuda.device_count()):
            torch.cuda.reset_peak_memory_stats(i)
    bar = _KldProgress(n, labels[0] if len(labels) == 1 else reference_label) if progress else None

    def on_batch(b: int, ref_nlls: list[float], stats: list[WindowStats]) -> None:
        if bar is not None:
            bar.kld = mean(stats[0].klds)
            bar.update(b, running_perplexity(stats[0].nlls))

    clock = ForwardClock(len(models) + 1, device)
    _sync(device)
    t0 = time.perf_counter()
    try:
        ref_nlls, stats = compare_windows(
            reference,
            models,
            windows,
            batch_size=batch_size,
            chunk_tokens=chunk_tokens,
            labels=labels,
            reference_label=reference_label,
            on_batch=on_batch,
            clock=clock,
        )
        _sync(device)
    finally:
        if bar is not None:
            bar.close()
    wall = time.perf_counter() - t0
    peak = sum(torch.cuda.max_memory_allocated(i) for i in range(torch.cuda.device_count())) if cuda else None
    ppl_ref = _ppl(ref_nlls, f"the reference ({reference_label})")
    common = common_fields(
        tokens, dataset, n, n_total, seqlen, batch_size, device, wall, peak, _dtype(reference),
        clock.seconds[0], clock.steady_tokens_per_s(0),
    )  # fmt: skip
    return [
        _result(st, ref_nlls, ppl_ref, _ppl(st.nlls, f"the model ({label})"), _dtype(m), common, len(models), clock, i)
        for i, (st, m, label) in enumerate(zip(stats, models, labels, strict=True), start=1)
    ]


def evaluate_comparison(reference, model, tokens: TokenizedText, dataset: CanonicalText, **kw) -> ComparisonResult:
    """:func:`evaluate_comparisons` for one model (``label=`` names it)."""
    label = kw.pop("label", "model")
    return evaluate_comparisons(reference, [model], tokens, dataset, labels=[label], **kw)[0]


def common_fields(
    tokens: TokenizedText,
    dataset: CanonicalText,
    n: int,
    n_total: int,
    seqlen: int,
    batch_size: int,
    device,
    wall: float,
    peak: int | None,
    dtype_reference: str,
    ref_seconds: float,
    ref_tokens_per_s: float,
) -> dict:
    """The :class:`ComparisonResult` fields every model of one comparison pass shares (in memory or stored)."""
    return dict(
        n_positions=n * (seqlen - 1),
        dtype_reference=dtype_reference,
        n_tokens=tokens.n_tokens,
        n_windows=n,
        n_windows_total=n_total,
        tail_tokens=tail_tokens(tokens.n_tokens, seqlen),
        seqlen=seqlen,
        batch_size=batch_size,
        bos_added=tokens.bos_added,
        tokenizer_name=tokens.tokenizer_name,
        tokenizer_sha256=tokens.tokenizer_sha256,
        device=str(device),
        dataset_sha256=dataset.sha256,
        dataset_source=dataset.source,
        canonical=dataset.canonical,
        partial=n < n_total,
        wall_time_s=wall,
        tokens_per_s=n * seqlen / wall if wall > 0 else float("inf"),
        peak_memory_bytes=peak,
        forward_time_s_reference=ref_seconds,
        forward_tokens_per_s_reference=ref_tokens_per_s,
    )  # fmt: skip


def _ppl(nlls: list[float], who: str) -> float:
    try:
        return perplexity(nlls)
    except PerplexityOverflowError as exc:
        raise ProtocolError(f"{who}: {exc}") from exc


def _dtype(model) -> str:
    return str(next(model.parameters()).dtype).removeprefix("torch.")


def _result(
    st: WindowStats,
    ref_nlls: list[float],
    ppl_ref: float,
    ppl: float,
    dtype: str,
    common: dict,
    n_models: int,
    clock: ForwardClock,
    index: int,
) -> ComparisonResult:
    assert st.sketch is not None
    ln_ratio, ln_err = ln_ratio_and_err(st.nlls, ref_nlls)
    mean_kld = mean(st.klds)
    token_var = max(0.0, mean(st.kld_sq) - mean_kld * mean_kld)
    return ComparisonResult(
        mean_kld=mean_kld,
        kld_std_err=std_err(st.klds),
        kld_token_std=token_var**0.5,
        max_kld=max(st.kld_max),
        kld_percentiles=st.sketch.percentiles(PERCENTS),
        kld_percentile_rel_error=st.sketch.rel_error,
        top1_agreement=mean(st.top1),
        mean_delta_p=mean(st.delta_p),
        rms_delta_p=mean(st.delta_p_sq) ** 0.5,
        ppl_reference=ppl_ref,
        ppl_model=ppl,
        ln_ppl_ratio=ln_ratio,
        ln_ppl_ratio_std_err=ln_err,
        window_klds=list(st.klds),
        window_kld_max=list(st.kld_max),
        window_top1=list(st.top1),
        window_delta_p=list(st.delta_p),
        window_rms_delta_p=[v**0.5 for v in st.delta_p_sq],
        window_nlls_reference=list(ref_nlls),
        window_nlls_model=list(st.nlls),
        dtype=dtype,
        extra={"models_in_pass": n_models} if n_models > 1 else {},
        forward_time_s=clock.seconds[index],
        forward_tokens_per_s=clock.steady_tokens_per_s(index),
        **common,
    )
