"""Window and loss math of the canonical protocol (pure functions, no model loading)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from pplgate.errors import NonFiniteLossError, PerplexityOverflowError, ProtocolError


def window_count(n_tokens: int, seqlen: int) -> int:
    """Number of full, non-overlapping windows: ``n_tokens // seqlen`` (the tail is dropped)."""
    if seqlen < 2:
        raise ProtocolError(f"seqlen must be >= 2 to score any token, got {seqlen}")
    if n_tokens < 0:
        raise ValueError(f"n_tokens must be >= 0, got {n_tokens}")
    return n_tokens // seqlen


def window_spans(n_tokens: int, seqlen: int) -> list[tuple[int, int]]:
    """``[start, end)`` token spans of each window, in order."""
    return [(i * seqlen, (i + 1) * seqlen) for i in range(window_count(n_tokens, seqlen))]


def tail_tokens(n_tokens: int, seqlen: int) -> int:
    """Tokens after the last full window, which the protocol drops."""
    return n_tokens - window_count(n_tokens, seqlen) * seqlen


def make_windows(ids: torch.Tensor, seqlen: int) -> torch.Tensor:
    """Reshape a 1-D token tensor into ``[n_windows, seqlen]`` (a view of the prefix)."""
    if ids.dim() != 1:
        raise ValueError(f"expected a 1-D token tensor, got shape {tuple(ids.shape)}")
    n = window_count(ids.numel(), seqlen)
    return ids[: n * seqlen].view(n, seqlen)


LOSS_CHUNK_BYTES = 256 * 2**20
# bytes per logit element alive in one chunk: model-dtype logits (<= 4), fp32 copy (4), fp32 log-softmax (4)
_BYTES_PER_LOGIT = 12


def auto_chunk_tokens(vocab_size: int, budget_bytes: int = LOSS_CHUNK_BYTES) -> int:
    """Rows of logits per loss chunk so that one chunk's logits stay within ``budget_bytes``."""
    return max(64, budget_bytes // (_BYTES_PER_LOGIT * max(1, vocab_size)))


def window_mean_nlls(
    hidden: torch.Tensor,
    tokens: torch.Tensor,
    head: torch.nn.Module | None = None,
    *,
    chunk_tokens: int | None = None,
) -> torch.Tensor:
    """Mean fp32 cross-entropy per window of logits[:-1] against tokens[1:].

    ``hidden`` is either the final hidden states ``[b, L, H]`` (then ``head`` maps them to
    logits) or, with ``head=None``, the logits ``[b, L, V]`` themselves. Logits are made at
    most ``chunk_tokens`` rows at a time (default: :func:`auto_chunk_tokens`, 256 MiB of logits)
    and upcast to fp32 before the loss, so a batch's full-vocabulary fp32 logits never exist at
    once. Returns a float64 tensor ``[b]``.
    """
    b, length = tokens.shape
    if length < 2:
        raise ProtocolError("a window needs at least 2 tokens")
    if head is None:
        return _logits_window_mean_nlls(hidden, tokens, chunk_tokens or auto_chunk_tokens(hidden.shape[-1]))
    states = hidden[:, :-1, :].reshape(b * (length - 1), hidden.shape[-1])
    labels = tokens[:, 1:].reshape(-1).to(states.device)
    if chunk_tokens is None:
        chunk_tokens = auto_chunk_tokens(getattr(head, "out_features", hidden.shape[-1]))
    sums = torch.zeros(b, dtype=torch.float64, device=states.device)
    row_window = torch.arange(b, device=states.device).repeat_interleave(length - 1)
    for start in range(0, states.shape[0], chunk_tokens):
        stop = min(start + chunk_tokens, states.shape[0])
        logits = head(states[start:stop]).float()
        # with device_map="auto" the head may sit on another GPU than the body's last layer
        nll = F.cross_entropy(logits, labels[start:stop].to(logits.device), reduction="none")
        sums.index_add_(0, row_window[start:stop], nll.double().to(sums.device))
    return sums / (length - 1)


def _logits_window_mean_nlls(logits: torch.Tensor, tokens: torch.Tensor, chunk_tokens: int) -> torch.Tensor:
    """:func:`window_mean_nlls` for ready-made logits ``[b, L, V]``: walks each window's rows in place
    (contiguous views), so the batch's logits are never copied."""
    b, length = tokens.shape
    sums = torch.zeros(b, dtype=torch.float64, device=logits.device)
    for w in range(b):
        labels = tokens[w, 1:].to(logits.device)
        for start in range(0, length - 1, chunk_tokens):
            stop = min(start + chunk_tokens, length - 1)
            nll = F.cross_entropy(logits[w, start:stop].float(), labels[start:stop], reduction="none")
            sums[w] += nll.double().sum()
    return sums / (length - 1)


def check_finite(window_nlls: Sequence[float], offset: int = 0) -> None:
    """Raise :class:`NonFiniteLossError` naming the first window whose loss is NaN/inf."""
    for i, v in enumerate(window_nlls):
        if not math.isfinite(v):
            raise NonFiniteLossError(offset + i, v)


def perplexity(window_nlls: Sequence[float]) -> float:
    """PPL = exp(mean over windows of the per-window mean NLL).

    A mean above ln(float max) (~709.78 nats) raises :class:`PerplexityOverflowError` naming the worst
    window, rather than returning ``inf`` (which JSON and baselines cannot hold) or ``OverflowError``.
    """
    if len(window_nlls) == 0:
        raise ProtocolError("no windows to score: the text is shorter than one window")
    check_finite(window_nlls)
    mean = math.fsum(window_nlls) / len(window_nlls)
    try:
        return math.exp(mean)
    except OverflowError:
        worst = max(range(len(window_nlls)), key=lambda i: window_nlls[i])
        raise PerplexityOverflowError(worst, window_nlls[worst], mean, len(window_nlls)) from None


def running_perplexity(window_nlls: Sequence[float]) -> float:
    """:func:`perplexity` for progress displays: ``inf`` instead of an error (the final number still raises)."""
    try:
        return perplexity(window_nlls)
    except PerplexityOverflowError:
        return math.inf
