"""A reference model against one or more models on the same canonical windows, in one pass: KL
divergence, top-1 agreement, Δp, and every model's own window NLLs (so the reference's PPL comes
from the same forward passes; no third pass, no logit files).

**How.** Each batch of windows goes through every model's transformer body once (the same token
ids); the final hidden states stay, and the scored positions (logits[:-1]) are walked
``chunk_tokens`` rows at a time. For a chunk, the reference's fp32 ``log p`` and ``p`` are made once
and every model's fp32 ``log q`` in turn is compared with them; ``p`` exists for that chunk only.
Per-row results are summed per window in float64; the per-token KLD also goes into a
:class:`~pplgate.protocol.kld_stats.KldSketch` for its percentiles.

**Memory** (bytes; ``b`` = batch size, ``L`` = seqlen, ``H`` = hidden size, ``V`` = vocabulary,
``s`` = the models' dtype size, ``c`` = chunk rows, ``m`` = models besides the reference):
``weights(reference) + Σ weights(models) + one body's forward activations for b windows
+ (1+m)·b·L·H·s (the kept hidden states of the scored rows; the current model's briefly twice)
+ 16·c·V (one chunk: log p and p in fp32, one model's logits and its fp32 log q)
+ m·(12·b·L + ~170 KB) (per-position KLD, agreement, Δp of the batch; the sketch)``. The default
``c`` keeps the chunk term within :data:`~pplgate.protocol.windows.LOSS_CHUNK_BYTES` (256 MiB), as
the PPL's chunked loss does; it does not grow with ``m``. A model whose logits are not
``lm_head(hidden)`` (softcapping, logit scaling) makes its full ``b·L·V·s`` logits instead of
``b·L·H·s`` hidden states.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from pplgate.errors import NonFiniteLogitsError, ProtocolError
from pplgate.protocol.engine import (
    _out_of_memory,
    model_device,
    split_head,
)
from pplgate.protocol.kld_stats import KldSketch
from pplgate.protocol.windows import LOSS_CHUNK_BYTES

# fp32 bytes per logit element alive in one chunk: log p, p, one model's logits (<= 4) and its log q
COMPARE_BYTES_PER_LOGIT = 16
_STATS = ("kld", "kld_sq", "top1", "dp", "dp_sq", "nll")


def compare_chunk_tokens(vocab_size: int, budget_bytes: int = LOSS_CHUNK_BYTES) -> int:
    """Rows per comparison chunk so that one chunk's tensors stay within ``budget_bytes``."""
    return max(64, budget_bytes // (COMPARE_BYTES_PER_LOGIT * max(1, vocab_size)))


def logit_dim(model) -> int | None:
    """Entries per position of the model's logits (lm_head rows, else ``config.vocab_size``)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    rows = getattr(head, "out_features", None)
    if isinstance(rows, int):
        return rows
    value = getattr(getattr(model, "config", None), "vocab_size", None)
    return value if isinstance(value, int) and value > 0 else None


@dataclass
class WindowStats:
    """One model's per-window results against the reference (window order), plus its KLD sketch."""

    klds: list[float] = field(default_factory=list)
    kld_sq: list[float] = field(default_factory=list)  # mean of KLD² per window (for the token sd)
    kld_max: list[float] = field(default_factory=list)
    top1: list[float] = field(default_factory=list)
    delta_p: list[float] = field(default_factory=list)
    delta_p_sq: list[float] = field(default_factory=list)
    nlls: list[float] = field(default_factory=list)
    sketch: KldSketch | None = None

    def extend(self, means: list[list[float]], maxes: list[float]) -> None:
        """Append one batch: ``means`` in the order of ``_STATS``, ``maxes`` the per-window max KLD."""
        targets = (self.klds, self.kld_sq, self.top1, self.delta_p, self.delta_p_sq, self.nlls)
        for target, values in zip(targets, means, strict=True):
            target.extend(values)
        self.kld_max.extend(maxes)


class ForwardClock:
    """Seconds each model of a pass spends in its own forward passes (body and head), the shared
    log-softmax/KLD math excluded: what makes one model's tokens/s comparable with another's in the pass.

    On CUDA a pair of CUDA events per forward (no synchronisation added; the times are read once the
    batch's results reached the host), elsewhere the wall clock. Kept per batch: the first batch of a
    pass carries one-time costs (Triton compilation, cuBLAS autotuning, allocator growth), so
    :meth:`steady_tokens_per_s` leaves it out when there are later ones.
    """

    def __init__(self, n_models: int, device: torch.device) -> None:
        self.batches: list[tuple[int, list[float]]] = []  # (tokens, seconds per model) per batch
        self._cuda = device.type == "cuda"
        self._pending: list[tuple[int, torch.cuda.Event, torch.cuda.Event]] = []
        self._current = [0.0] * n_models

    @contextlib.contextmanager
    def timing(self, i: int) -> Iterator[None]:
        if not self._cuda:
            t0 = time.perf_counter()
            yield
            self._current[i] += time.perf_counter() - t0
            return
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        yield
        end.record()
        self._pending.append((i, start, end))

    def settle(self, tokens: int) -> None:
        """Close the batch of ``tokens`` tokens (waits for its CUDA end events)."""
        for i, start, end in self._pending:
            end.synchronize()
            self._current[i] += start.elapsed_time(end) / 1000.0
        self._pending.clear()
        self.batches.append((tokens, self._current))
        self._current = [0.0] * len(self._current)

    @property
    def seconds(self) -> list[float]:
        """Each model's forward seconds over the settled batches."""
        return [sum(s[i] for _, s in self.batches) for i in range(len(self._current))]

    def steady_tokens_per_s(self, i: int) -> float:
        """Model ``i``'s tokens per second of its own forwards, the first batch left out when others follow."""
        steady = self.batches[1:] or self.batches
        seconds = sum(s[i] for _, s in steady)
        return sum(t for t, _ in steady) / seconds if seconds > 0 else float("inf")


def _vocab_problem(ref_dim: int | None, dim: int | None, label: str, ref_label: str) -> str | None:
    if ref_dim is None or dim is None or ref_dim == dim:
        return None
    return (
        f"the reference ({ref_label}) has {ref_dim} logits per position and the model ({label}) {dim}: the KL "
        "divergence needs one vocabulary. Compare models that share a tokenizer and vocabulary size (two variants "
        "of one model, or a model and its quantized copy)"
    )


class _Forward:
    """One model's output for the current batch and a getter of its logits for rows ``[lo, hi)``."""

    def __init__(self, model, batch: torch.Tensor, clock: ForwardClock, index: int) -> None:
        self.clock, self.index = clock, index
        with clock.timing(index):
            self._run(model, batch)

    def _run(self, model, batch: torch.Tensor) -> None:
        split = split_head(model)
        self.length = batch.shape[1]
        if split is not None:
            body, self.head = split
            hidden = body(input_ids=batch, use_cache=False).last_hidden_state
            self.out = hidden[:, :-1, :].reshape(-1, hidden.shape[-1])
        else:
            self.head = None
            self.out = model(input_ids=batch, use_cache=False).logits

    def rows(self, lo: int, hi: int) -> torch.Tensor:
        if self.head is not None:
            with self.clock.timing(self.index):
                return self.head(self.out[lo:hi])
        w, s = divmod(lo, self.length - 1)  # chunks never cross a window on this path
        return self.out[w, s : s + hi - lo]


def _chunks(b: int, length: int, chunk: int, per_window: bool) -> list[tuple[int, int]]:
    rows = length - 1
    if not per_window:
        return [(lo, min(lo + chunk, b * rows)) for lo in range(0, b * rows, chunk)]
    return [(w * rows + s, w * rows + min(s + chunk, rows)) for w in range(b) for s in range(0, rows, chunk)]


def _first_bad(fwd: _Forward, window: int, rows: int, chunk: int) -> int | None:
    """Position (within the window) of the first non-finite logit of ``window``, or None."""
    for s in range(0, rows, chunk):
        lo = window * rows + s
        bad = ~torch.isfinite(fwd.rows(lo, min(lo + chunk, (window + 1) * rows))).all(dim=-1)
        if bool(bad.any()):
            return s + int(bad.nonzero()[0, 0])
    return None


def _diagnose(fwds: list[_Forward], labels: list[str], window: int, offset: int, rows: int, chunk: int) -> None:
    """Raise :class:`NonFiniteLogitsError` for the first model whose logits in ``window`` are NaN/inf."""
    for i, fwd in enumerate(fwds):
        pos = _first_bad(fwd, window, rows, chunk)
        if pos is not None:
            raise NonFiniteLogitsError(offset + window, "reference" if i == 0 else "model", labels[i], pos)
    raise NonFiniteLogitsError(offset + window, "model", labels[1], None)


@torch.inference_mode()
def compare_windows(
    reference,
    models: Sequence,
    windows: torch.Tensor,
    *,
    batch_size: int = 1,
    chunk_tokens: int | None = None,
    labels: Sequence[str] | None = None,
    reference_label: str = "reference",
    on_batch: Callable[[int, list[float], list[WindowStats]], None] | None = None,
    clock: ForwardClock | None = None,
) -> tuple[list[float], list[WindowStats]]:
    """Score ``windows [n, L]`` with ``reference`` and every model of ``models`` on the same batches.

    Returns the reference's per-window mean NLLs and one :class:`WindowStats` per model.
    ``on_batch(n_new, reference_nlls, stats)`` is called after each batch; ``clock`` (one slot per model,
    the reference first) receives each model's forward seconds.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not models:
        raise ValueError("compare_windows needs at least one model besides the reference")
    names = [reference_label, *(labels or [f"model {i}" for i in range(len(models))])]
    ref_dim = logit_dim(reference)
    for model, name in zip(models, names[1:], strict=True):
        problem = _vocab_problem(ref_dim, logit_dim(model), name, reference_label)
        if problem:
            raise ProtocolError(problem)
    device = model_device(reference)
    length = windows.shape[1]
    rows = length - 1
    if rows < 1:
        raise ProtocolError("a window needs at least 2 tokens")
    chunk = chunk_tokens or compare_chunk_tokens(ref_dim or 1)
    per_window = any(split_head(m) is None for m in (reference, *models))
    clock = clock or ForwardClock(len(models) + 1, device)
    ref_nlls: list[float] = []
    stats = [WindowStats(sketch=KldSketch(device=device)) for _ in models]
    for start in range(0, windows.shape[0], batch_size):
        batch = windows[start : start + batch_size]
        b = batch.shape[0]
        try:
            fwds = [
                _Forward(m, batch.to(model_device(m), non_blocking=True), clock, i)
                for i, m in enumerate((reference, *models))
            ]
            ref_sum, sums, kmax = _compare_batch(fwds, batch.to(device), chunk, per_window, stats, names)
        except (MemoryError, RuntimeError) as exc:
            if not _out_of_memory(exc):
                raise
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise ProtocolError(
                f"out of memory comparing windows {start}..{start + b - 1} ({b} per forward pass, {len(models) + 1} "
                f"models) on {device}: {first}. Lower the batch size (--batch-size; the numbers do not depend on it)"
            ) from exc
        ref_vals = (ref_sum / rows).tolist()
        per_model = [(s / rows).tolist() for s in sums]
        maxes = [m.tolist() for m in kmax]
        clock.settle(b * length)
        for w in range(b):
            finite = [ref_vals[w], *(v for pm in per_model for v in (pm[0][w], pm[5][w]))]
            if not all(map(_finite, finite)):
                _diagnose(fwds, names, w, start, rows, chunk)
        del fwds
        ref_nlls.extend(ref_vals)
        for st, pm, mx in zip(stats, per_model, maxes, strict=True):
            st.extend(pm, mx)
        if on_batch is not None:
            on_batch(b, ref_nlls, stats)
    return ref_nlls, stats


def _finite(v: float) -> bool:
    return v == v and abs(v) != float("inf")


def _compare_batch(
    fwds: list[_Forward],
    batch: torch.Tensor,
    chunk: int,
    per_window: bool,
    stats: list[WindowStats],
    names: list[str],
) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """Per-window sums for one batch: the reference's NLL ``[b]``, per model ``[6, b]`` (see ``_STATS``)
    and per model the max KLD ``[b]``; all float64 on the reference's device.

    The NLLs are summed chunk by chunk exactly as the PPL engine sums them (the same numbers, bit for
    bit on CPU); a model's per-position KLD, agreement and Δp go into a ``[3, b·(L-1)]`` fp32 buffer
    and are reduced once per batch (few kernel launches per chunk)."""
    b, length = batch.shape
    dev = batch.device
    labels = batch[:, 1:].reshape(-1)
    row_window = torch.arange(b, device=dev).repeat_interleave(length - 1)
    ref_sum = torch.zeros(b, dtype=torch.float64, device=dev)
    nll_sums = [torch.zeros(b, dtype=torch.float64, device=dev) for _ in fwds[1:]]
    per_pos = [torch.empty(3, labels.numel(), dtype=torch.float32, device=dev) for _ in fwds[1:]]  # kld, top1, dp
    for lo, hi in _chunks(b, length, chunk, per_window):
        win = row_window[lo:hi]
        y = labels[lo:hi, None]
        logits = fwds[0].rows(lo, hi).to(dev)  # the head may sit on another GPU (device_map)
        top_p = logits.argmax(dim=-1)  # argmax of the logits is argmax p (without fp32 log-softmax ties)
        logp = F.log_softmax(logits, dim=-1, dtype=torch.float32)
        del logits
        ref_sum.index_add_(0, win, -logp.gather(1, y).squeeze(1).double())
        p = logp.exp()
        p_y = p.gather(1, y).squeeze(1)
        for fwd, nll_sum, out, name in zip(fwds[1:], nll_sums, per_pos, names[1:], strict=True):
            logits = fwd.rows(lo, hi).to(dev)
            if logits.shape[-1] != logp.shape[-1]:
                raise ProtocolError(_vocab_problem(logp.shape[-1], logits.shape[-1], name, names[0]) or "")
            out[1, lo:hi] = logits.argmax(dim=-1) == top_p
            logq = F.log_softmax(logits, dim=-1, dtype=torch.float32)
            del logits
            logq_y = logq.gather(1, y).squeeze(1)
            nll_sum.index_add_(0, win, -logq_y.double())
            d = torch.sub(logp, logq, out=logq)  # log p - log q, in place of log q
            torch.sum(d.mul_(p), dim=-1, out=out[0, lo:hi])
            out[0, lo:hi].clamp_(min=0.0)  # KL >= 0: fp32 rounding of near-identical rows gives ~-1e-8
            torch.sub(logq_y.exp(), p_y, out=out[2, lo:hi])
            del d
    sums, kmax = [], []
    for out, nll_sum, st in zip(per_pos, nll_sums, stats, strict=True):
        kld, top1, dp = (v.view(b, length - 1).double() for v in out)
        sums.append(torch.stack((kld.sum(1), (kld * kld).sum(1), top1.sum(1), dp.sum(1), (dp * dp).sum(1), nll_sum)))
        kmax.append(kld.amax(1))
        assert st.sketch is not None
        st.sketch.add(out[0])
    return ref_sum, sums, kmax
