r"""Comparing against a stored top-K reference (:mod:`.reference_file`): :func:`save_reference` scores the
reference once and writes the file; :func:`compare_to_reference` scores only the compared model and reads
the file window by window, returning the same :class:`~pplgate.protocol.compare_result.ComparisonResult`
as the in-memory pass (:func:`pplgate.protocol.compare.evaluate_comparison`).

**Exact and estimated.** With the same batch size and chunks as the in-memory pass, these are the in-memory
pass's numbers, bit for bit on CPU: ``ppl_reference`` (the stored fp64 per-window NLLs), ``ppl_model``,
top-1 agreement (column 0 of the stored ids is the argmax of the reference's logits), Δp = q(y) - p(y)
(p(y) = exp of the stored fp32 NLL). The KLD is an estimate: over the K stored ids plus one tail bucket,
``Σ_K p (log p - log q) + P_tail (log P_tail - log Q_tail)`` with ``Q_tail`` the model's mass outside
the K ids (a log-sum-exp over them, not 1 - Σ). Merging the tail ids into one bucket can only lower the
divergence (the log-sum inequality), so the estimate is <= the exact KLD up to the rounding of the
stored log-probs; its error for each K is measured (bench/reference_topk.py, docs/KLD.md).

**Sampled tail** (a file written with ``tail_samples`` S > 0): the file also holds, per position, S ids drawn
with replacement from the reference's distribution restricted to the tail (``p / P_tail`` outside the K ids)
and their log p; the tail term is then ``P_tail · mean_s(log p(v_s) - log q(v_s))``, an unbiased estimate of
``Σ_tail p (log p - log q)`` (no longer a lower bound; the per-position value is clamped at 0 like the exact
one). Its noise per position is ~``P_tail · sd / sqrt(S)`` and averages out over the windows' positions.

**Memory** of the comparison: the model's weights and one PPL pass (one body's activations, its kept hidden
states, one chunk of ``c`` rows: logits and fp32 log q), plus one batch of windows of the file
(``b·(L-1)·(K·(i+l) + 8)`` bytes; ``i``, ``l`` the id and log-prob sizes) and ``8·c·K`` for the gathered
rows. The reference model is never loaded.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from pplgate.errors import ProtocolError
from pplgate.protocol.compare import _KldProgress, _ppl, _result, common_fields
from pplgate.protocol.compare_result import ComparisonResult
from pplgate.protocol.dataset import CanonicalText
from pplgate.protocol.divergence import ForwardClock, WindowStats, _chunks, _Forward, compare_chunk_tokens, logit_dim
from pplgate.protocol.engine import _sync, model_device, scoring_windows, split_head
from pplgate.protocol.kld_stats import KldSketch, mean
from pplgate.protocol.progress import Progress
from pplgate.protocol.reference_file import ReferenceWriter, StoredReference, windows_sha256
from pplgate.protocol.tokens import TokenizedText
from pplgate.protocol.windows import running_perplexity

# measured (bench/reference_topk.py, docs/KLD.md): top-64 + 32 sampled tail ids put SmolLM2's mean KLD within 0.1%
# of the exact one; one tail bucket (tail_samples=0) is 19% low at K=64, 10% at K=256, 4% at K=1024
DEFAULT_TOP_K = 64
DEFAULT_TAIL_SAMPLES = 32


def _dtype(model) -> str:
    return str(next(model.parameters()).dtype).removeprefix("torch.")


def _vocab(model) -> int:
    dim = logit_dim(model)
    if dim is None:
        raise ProtocolError("the model's vocabulary size is unknown (no lm_head, no config.vocab_size)")
    return dim


def _oom(exc: BaseException, what: str, device: torch.device) -> ProtocolError:
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
    return ProtocolError(f"out of memory {what} on {device}: {first}. Lower the batch size (--batch-size)")


@torch.inference_mode()
def save_reference(
    model,
    tokens: TokenizedText,
    dataset: CanonicalText,
    path: str | Path,
    *,
    top_k: int = DEFAULT_TOP_K,
    seqlen: int,
    batch_size: int = 1,
    max_windows: int | None = None,
    chunk_tokens: int | None = None,
    logprob_dtype: str = "float32",
    tail_samples: int = DEFAULT_TAIL_SAMPLES,
    seed: int = 0,
    identity: Mapping[str, Any] | None = None,
    progress: bool = True,
    label: str = "reference",
) -> dict[str, Any]:
    """Score ``model`` (the reference) on the canonical windows and write its top-``top_k`` file to ``path``
    (with ``tail_samples`` S > 0 also S sampled tail ids per position, drawn from a generator seeded with
    ``seed``). ``identity`` (model, variant, ...) goes into the metadata. Returns what was written and the time
    it took."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    windows, n_total = scoring_windows([model], tokens, seqlen, max_windows)
    n, length = windows.shape
    rows, vocab, device = length - 1, _vocab(model), model_device(model)
    meta = {
        **fingerprint(tokens, dataset, windows),
        "dataset_source": dataset.source,
        "canonical": dataset.canonical,
        "tokenizer_name": tokens.tokenizer_name,
        "n_windows_total": n_total,
        "n_tokens": tokens.n_tokens,
        "vocab_size": vocab,
        "top_k": top_k,
        "tail_samples": tail_samples,
        "tail_seed": seed,
        "dtype_reference": _dtype(model),
        "batch_size": batch_size,
        "device": str(device),
        **{k: v for k, v in (identity or {}).items()},
    }
    writer = ReferenceWriter(path, meta, logprob_dtype=logprob_dtype)
    chunk = chunk_tokens or compare_chunk_tokens(vocab)
    per_window = split_head(model) is None
    clock = ForwardClock(1, device)
    gen = torch.Generator(device=device).manual_seed(seed) if tail_samples else None
    bar = Progress(n, label) if progress else None
    nlls: list[float] = []
    _sync(device)
    t0 = time.perf_counter()
    try:
        for start in range(0, n, batch_size):
            batch = windows[start : start + batch_size].to(device)
            b = batch.shape[0]
            try:
                fwd = _Forward(model, batch, clock, 0)
                out = _top_k_batch(fwd, batch, chunk, per_window, top_k, tail_samples, gen)
            except (MemoryError, RuntimeError) as exc:
                if "out of memory" not in str(exc).lower() and not isinstance(exc, MemoryError):
                    raise
                raise _oom(exc, f"scoring windows {start}..{start + b - 1}", device) from exc
            ref_sum, nll, ids, lps, tail, samples = out
            values = (ref_sum / rows).tolist()
            if not all(v == v and abs(v) != float("inf") for v in values):
                raise ProtocolError(f"the reference has non-finite logits in windows {start}..{start + b - 1}")
            for w in range(b):
                sl = slice(w * rows, (w + 1) * rows)
                writer.add(nll[sl], ids[sl], lps[sl], tail[sl], **{k: v[sl] for k, v in samples.items()})
            clock.settle(b * length)
            nlls.extend(values)
            if bar is not None:
                bar.update(b, running_perplexity(nlls))
        digest = writer.close(nlls)
    except BaseException:
        writer.abort()
        raise
    finally:
        if bar is not None:
            bar.close()
    wall = time.perf_counter() - t0
    size = Path(path).stat().st_size
    return {
        "path": str(path),
        "content_sha256": digest,
        "bytes": size,
        "bytes_per_window": size / n,
        "n_windows": n,
        "top_k": top_k,
        "wall_time_s": wall,
        "ppl_reference": _ppl(nlls, "the reference"),
        "window_nlls_reference": nlls,
    }


def fingerprint(tokens: TokenizedText, dataset: CanonicalText, windows: torch.Tensor) -> dict[str, Any]:
    """The protocol fingerprint a stored reference and a comparison must share."""
    return {
        "dataset_sha256": dataset.sha256,
        "tokenizer_sha256": tokens.tokenizer_sha256,
        "seqlen": windows.shape[1],
        "bos_added": tokens.bos_added,
        "n_windows": windows.shape[0],
        "windows_sha256": windows_sha256(windows),
    }


def _top_k_batch(
    fwd: _Forward, batch: torch.Tensor, chunk: int, per_window: bool, k: int, s: int, gen: torch.Generator | None
) -> tuple:
    """One batch of the reference: per-window NLL sums (fp64, the in-memory pass's order) and per row the
    fp32 NLL, the top-k ids (argmax first), their log p, the tail mass and (``s`` > 0) ``s`` sampled tail ids
    with their log p."""
    b, length = batch.shape
    dev = batch.device
    labels = batch[:, 1:].reshape(-1)
    n_rows = labels.numel()
    row_window = torch.arange(b, device=dev).repeat_interleave(length - 1)
    ref_sum = torch.zeros(b, dtype=torch.float64, device=dev)
    nll = torch.empty(n_rows, dtype=torch.float32, device=dev)
    ids = torch.empty(n_rows, k, dtype=torch.int64, device=dev)
    lps = torch.empty(n_rows, k, dtype=torch.float32, device=dev)
    tail = torch.empty(n_rows, dtype=torch.float32, device=dev)
    s_ids = torch.empty(n_rows, s, dtype=torch.int64, device=dev)
    s_lps = torch.empty(n_rows, s, dtype=torch.float32, device=dev)
    for lo, hi in _chunks(b, length, chunk, per_window):
        logits = fwd.rows(lo, hi).to(dev)
        top = logits.argmax(dim=-1, keepdim=True)  # the in-memory pass's top-1, ties included
        logp = F.log_softmax(logits, dim=-1, dtype=torch.float32)
        del logits
        logp_y = logp.gather(1, labels[lo:hi, None]).squeeze(1)
        ref_sum.index_add_(0, row_window[lo:hi], -logp_y.double())
        nll[lo:hi] = -logp_y
        top_lp = logp.gather(1, top)
        if k > 1:
            rest = logp.scatter(1, top, -torch.inf).topk(k - 1, dim=-1)
            ids[lo:hi] = torch.cat((top, rest.indices), dim=1)
            lps[lo:hi] = torch.cat((top_lp, rest.values), dim=1)
        else:
            ids[lo:hi], lps[lo:hi] = top, top_lp
        logp.scatter_(1, ids[lo:hi], -torch.inf)
        log_tail = torch.logsumexp(logp, dim=-1)
        tail[lo:hi] = log_tail.exp()  # the other ids' mass, summed (not 1 - Σ_K p)
        if s:
            empty = ~torch.isfinite(log_tail)  # K = vocabulary (or an underflow): no tail to sample, weight 0
            probs = (logp - torch.where(empty, 0.0, log_tail)[:, None]).exp_()
            probs[empty, 0] = 1.0
            drawn = torch.multinomial(probs, s, replacement=True, generator=gen)
            del probs
            s_ids[lo:hi], s_lps[lo:hi] = drawn, logp.gather(1, drawn)
        del logp
    samples = {"tail_ids": s_ids.cpu(), "tail_logprobs": s_lps.cpu()} if s else {}
    return ref_sum, nll.cpu(), ids.cpu(), lps.cpu(), tail.cpu(), samples


@torch.inference_mode()
def compare_to_reference(
    stored: StoredReference,
    model,
    tokens: TokenizedText,
    dataset: CanonicalText,
    *,
    batch_size: int = 1,
    max_windows: int | None = None,
    chunk_tokens: int | None = None,
    progress: bool = True,
    label: str = "model",
) -> ComparisonResult:
    """``model`` against the stored reference on the file's windows (``max_windows``, when given, must be the
    file's). A fingerprint or vocabulary mismatch is a :class:`ProtocolError` before any forward."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if max_windows is not None and max_windows != stored.n_windows:
        raise ProtocolError(
            f"--max-windows {max_windows}: --reference-file {stored.path} holds {stored.n_windows} windows; "
            f"drop --max-windows (or pass {stored.n_windows}), or save a reference of {max_windows} windows"
        )
    windows, n_total = scoring_windows([model], tokens, stored.seqlen, stored.n_windows)
    n, length = windows.shape
    stored.check_fingerprint(fingerprint(tokens, dataset, windows))
    vocab = _vocab(model)
    if vocab != stored.vocab_size:
        raise ProtocolError(
            f"the model has {vocab} logits per position and --reference-file {stored.path} was written for a "
            f"vocabulary of {stored.vocab_size}: compare a model of the reference's vocabulary (its quantized copy)"
        )
    device = model_device(model)
    cuda = device.type == "cuda"
    if cuda:
        for i in range(torch.cuda.device_count()):
            torch.cuda.reset_peak_memory_stats(i)
    rows = length - 1
    chunk = chunk_tokens or compare_chunk_tokens(vocab)
    per_window = split_head(model) is None
    clock = ForwardClock(2, device)  # slot 0: the (absent) reference
    st = WindowStats(sketch=KldSketch(device=device))
    bar = _KldProgress(n, label) if progress else None
    _sync(device)
    t0 = time.perf_counter()
    try:
        for start in range(0, n, batch_size):
            batch = windows[start : start + batch_size].to(device)
            b = batch.shape[0]
            ref = list(stored.windows(start, start + b, device))
            cat = {k: torch.cat([r[k] for r in ref]) for k in ref[0]}
            del ref
            try:
                fwd = _Forward(model, batch, clock, 1)
                sums, kmax = _compare_stored_batch(fwd, batch, cat, chunk, per_window, st)
            except (MemoryError, RuntimeError) as exc:
                if "out of memory" not in str(exc).lower() and not isinstance(exc, MemoryError):
                    raise
                raise _oom(exc, f"comparing windows {start}..{start + b - 1}", device) from exc
            means = [(s / rows).tolist() for s in sums]
            clock.settle(b * length)
            for w in range(b):
                if not all(v == v and abs(v) != float("inf") for v in (means[0][w], means[5][w])):
                    raise ProtocolError(f"the model ({label}) has non-finite logits in window {start + w}")
            st.extend(means, kmax.tolist())
            if bar is not None:
                bar.kld = mean(st.klds)
                bar.update(b, running_perplexity(st.nlls))
        _sync(device)
    finally:
        if bar is not None:
            bar.close()
    wall = time.perf_counter() - t0
    peak = sum(torch.cuda.max_memory_allocated(i) for i in range(torch.cuda.device_count())) if cuda else None
    ref_nlls = list(stored.window_nlls)
    common = common_fields(
        tokens, dataset, n, n_total, length, batch_size, device, wall, peak,
        stored.meta.get("dtype_reference", "?"), 0.0, 0.0,
    )  # fmt: skip
    ppl_ref = _ppl(ref_nlls, "the stored reference")
    res = _result(st, ref_nlls, ppl_ref, _ppl(st.nlls, f"the model ({label})"), _dtype(model), common, 1, clock, 1)
    extra = {
        "reference_file": {
            "content_sha256": stored.meta.get("content_sha256"),
            "top_k": stored.top_k,
            "logprob_dtype": stored.meta.get("logprob_dtype"),
            "tail_samples": stored.tail_samples,
            "kld": f"top-{stored.top_k} + sampled tail (S={stored.tail_samples}), an unbiased estimate"
            if stored.tail_samples
            else f"top-{stored.top_k} + one tail bucket, a lower bound (<= the exact KLD up to rounding)",
        }
    }
    return dataclasses.replace(res, extra=extra)


def _compare_stored_batch(
    fwd: _Forward, batch: torch.Tensor, ref: dict[str, torch.Tensor], chunk: int, per_window: bool, st: WindowStats
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-window sums ``[6, b]`` (``divergence._STATS`` order) and max KLD ``[b]`` of one batch against the
    stored rows ``ref`` (the in-memory pass's reductions, so the exact quantities match it bit for bit)."""
    b, length = batch.shape
    dev = batch.device
    labels = batch[:, 1:].reshape(-1)
    row_window = torch.arange(b, device=dev).repeat_interleave(length - 1)
    nll_sum = torch.zeros(b, dtype=torch.float64, device=dev)
    out = torch.empty(3, labels.numel(), dtype=torch.float32, device=dev)  # kld, top1, dp
    for lo, hi in _chunks(b, length, chunk, per_window):
        ids, lp, p_tail = ref["ids"][lo:hi], ref["logprobs"][lo:hi], ref["tail"][lo:hi]
        logits = fwd.rows(lo, hi).to(dev)
        out[1, lo:hi] = logits.argmax(dim=-1) == ids[:, 0]
        logq = F.log_softmax(logits, dim=-1, dtype=torch.float32)
        del logits
        logq_y = logq.gather(1, labels[lo:hi, None]).squeeze(1)
        nll_sum.index_add_(0, row_window[lo:hi], -logq_y.double())
        torch.sub(logq_y.exp(), (-ref["nll"][lo:hi]).exp(), out=out[2, lo:hi])
        logq_k = logq.gather(1, ids)
        kl = (lp.exp() * (lp - logq_k)).sum(dim=-1)
        if "tail_ids" in ref:  # the sampled tail: P_tail · mean_s(log p - log q), unbiased
            s_lp = ref["tail_logprobs"][lo:hi]
            diff = (s_lp - logq.gather(1, ref["tail_ids"][lo:hi])).mean(dim=-1)
            del logq
            tail_term = torch.where(p_tail > 0, p_tail * diff, torch.zeros_like(p_tail))
        else:  # one bucket: P_tail · log(P_tail / Q_tail), a lower bound
            logq.scatter_(1, ids, -torch.inf)
            logq_tail = torch.logsumexp(logq, dim=-1)
            del logq
            tail_term = torch.where(p_tail > 0, p_tail * (p_tail.log() - logq_tail), torch.zeros_like(p_tail))
        torch.clamp(kl + tail_term, min=0.0, out=out[0, lo:hi])
    kld, top1, dp = (v.view(b, length - 1).double() for v in out)
    sums = torch.stack((kld.sum(1), (kld * kld).sum(1), top1.sum(1), dp.sum(1), (dp * dp).sum(1), nll_sum))
    assert st.sketch is not None
    st.sketch.add(out[0])
    return sums, kld.amax(1)
