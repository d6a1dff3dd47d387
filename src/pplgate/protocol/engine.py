"""The canonical WikiText-2 perplexity engine: window the tokens, score each window, aggregate."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch

from pplgate.errors import ProtocolError
from pplgate.protocol import DEFAULT_SEQLEN  # re-exported: pplgate.protocol.engine.DEFAULT_SEQLEN
from pplgate.protocol.dataset import CanonicalText
from pplgate.protocol.progress import Progress
from pplgate.protocol.result import PerplexityResult
from pplgate.protocol.tokens import TokenizedText
from pplgate.protocol.windows import (
    check_finite,
    make_windows,
    perplexity,
    running_perplexity,
    tail_tokens,
    window_mean_nlls,
)

# Config keys that make logits something other than lm_head(hidden): use the model's own logits.
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "output_multiplier_scale", "logits_scaling")


def model_max_positions(model) -> int | None:
    """The longest sequence the model's config allows, where it says so."""
    cfg = getattr(model, "config", None)
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(cfg, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def model_vocab_size(model) -> int | None:
    """Rows of the model's input embedding (else ``config.vocab_size``): token ids must stay below it."""
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    rows = getattr(emb, "num_embeddings", None)
    if isinstance(rows, int):
        return rows
    value = getattr(getattr(model, "config", None), "vocab_size", None)
    return value if isinstance(value, int) and value > 0 else None


def check_token_ids(ids: torch.Tensor, model, tokenizer_name: str) -> None:
    """A :class:`ProtocolError` when a token id is beyond the model's vocabulary (a tokenizer of another model)."""
    vocab = model_vocab_size(model)
    top = int(ids.max()) if ids.numel() else -1
    if vocab is not None and top >= vocab:
        raise ProtocolError(
            f"the tokenizer {tokenizer_name} gives token id {top}, but the model's vocabulary has {vocab} entries: "
            "the tokenizer is not this model's; drop --tokenizer (use the model's own) or pass the matching one"
        )


def split_head(model) -> tuple[torch.nn.Module, torch.nn.Module] | None:
    """``(body, lm_head)`` when logits are exactly ``lm_head(body(x).last_hidden_state)``.

    Returns None (use the model's full logits) for models that transform logits further.
    """
    cfg = getattr(model, "config", None)
    if cfg is None or any(getattr(cfg, k, None) not in (None, 1, 1.0) for k in _LOGIT_TRANSFORMS):
        return None
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    body = getattr(model, "base_model", None)
    if head is None or body is None or body is model:
        return None
    return body, head


def _out_of_memory(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, (MemoryError, torch.OutOfMemoryError)) or any(
        w in text for w in ("out of memory", "can't allocate memory", "cannot allocate memory")
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        for i in range(torch.cuda.device_count()):  # all of them: device_map="auto" spans several
            torch.cuda.synchronize(i)


def model_device(model) -> torch.device:
    return next(model.parameters()).device


@torch.inference_mode()
def score_windows(
    model,
    windows: torch.Tensor,
    *,
    batch_size: int = 1,
    loss_chunk_tokens: int | None = None,
    compile_model: bool = False,
    on_batch: Callable[[list[float]], None] | None = None,
) -> list[float]:
    """Per-window mean NLLs of ``windows [n, L]``, ``batch_size`` windows per forward, no KV cache.

    ``compile_model`` runs the transformer body through ``torch.compile`` (opt-in: fused kernels
    round differently, so the number moves within fp16 rounding; see docs/GATE.md on tolerances).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = model_device(model)
    split = split_head(model)
    if compile_model:
        if split is not None:
            split = (torch.compile(split[0], dynamic=False), split[1])
        else:
            model = torch.compile(model, dynamic=False)
    out: list[float] = []
    for start in range(0, windows.shape[0], batch_size):
        batch = windows[start : start + batch_size].to(device, non_blocking=True)
        try:
            if split is not None:
                body, head = split
                hidden = body(input_ids=batch, use_cache=False).last_hidden_state
                nlls = window_mean_nlls(hidden, batch, head, chunk_tokens=loss_chunk_tokens)
            else:
                logits = model(input_ids=batch, use_cache=False).logits
                nlls = window_mean_nlls(logits, batch, None, chunk_tokens=loss_chunk_tokens)
        except (MemoryError, RuntimeError) as exc:  # torch.OutOfMemoryError is a RuntimeError
            if not _out_of_memory(exc):
                raise
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise ProtocolError(
                f"out of memory scoring windows {start}..{start + batch.shape[0] - 1} ({batch.shape[0]} per forward "
                f"pass) on {device}: {first}. Lower the batch size (--batch-size, or the profile's batch_size; the "
                "number does not depend on it)"
            ) from exc
        values = nlls.tolist()
        check_finite(values, offset=start)
        out.extend(values)
        if on_batch is not None:
            on_batch(values)
    return out


def scoring_windows(
    models: Sequence[torch.nn.Module], tokens: TokenizedText, seqlen: int, max_windows: int | None
) -> tuple[torch.Tensor, int]:
    """``(windows to score, n_windows_total)`` of ``tokens`` for ``models``, checked before any forward:
    ``seqlen`` within every model's positions, every token id within its vocabulary, at least one window,
    ``max_windows`` >= 1 (shared by :func:`evaluate_perplexity` and the comparison pass)."""
    one = len(models) == 1
    for m in models:
        max_pos = model_max_positions(m)
        if max_pos is not None and seqlen > max_pos:
            raise ProtocolError(
                f"seqlen {seqlen} exceeds {'the' if one else 'a'} model's max_position_embeddings ({max_pos}); "
                f"pass --seqlen {max_pos} (or smaller). The {'number is' if one else 'numbers are'} then not "
                "comparable to published seqlen-2048 results."
            )
    windows = make_windows(tokens.ids, seqlen)
    for m in models:
        check_token_ids(windows, m, tokens.tokenizer_name)
    n_total = windows.shape[0]
    if n_total == 0:
        raise ProtocolError(
            f"the text has {tokens.n_tokens} tokens, fewer than one window of {seqlen}: nothing to score"
        )
    if max_windows is not None:
        if max_windows < 1:
            raise ValueError(f"max_windows must be >= 1, got {max_windows}")
        windows = windows[:max_windows]
    return windows, n_total


def evaluate_perplexity(
    model,
    tokens: TokenizedText,
    dataset: CanonicalText,
    *,
    seqlen: int = DEFAULT_SEQLEN,
    batch_size: int = 1,
    max_windows: int | None = None,
    loss_chunk_tokens: int | None = None,
    compile_model: bool = False,
    progress: bool = True,
    label: str = "ppl",
) -> PerplexityResult:
    """Run the canonical protocol on ``model`` and return a :class:`PerplexityResult`.

    ``progress`` shows a :class:`pplgate.protocol.progress.Progress` (a bar on a terminal, plain lines
    elsewhere) on stderr, labelled ``label`` (keep it short: model name, variant, dtype).
    """
    windows, n_total = scoring_windows([model], tokens, seqlen, max_windows)
    n = windows.shape[0]
    device = model_device(model)
    dtype = next(model.parameters()).dtype
    if device.type == "cuda":
        for i in range(torch.cuda.device_count()):
            torch.cuda.reset_peak_memory_stats(i)

    bar = Progress(n, label) if progress else None
    running: list[float] = []

    def on_batch(values: list[float]) -> None:
        running.extend(values)
        if bar is not None:
            bar.update(len(values), running_perplexity(running))

    _sync(device)
    t0 = time.perf_counter()
    try:
        nlls = score_windows(
            model,
            windows,
            batch_size=batch_size,
            loss_chunk_tokens=loss_chunk_tokens,
            compile_model=compile_model,
            on_batch=on_batch,
        )
        _sync(device)
    finally:
        if bar is not None:
            bar.close()
    wall = time.perf_counter() - t0
    peak = None
    if device.type == "cuda":  # summed over GPUs (one, unless the model is split across several)
        peak = sum(torch.cuda.max_memory_allocated(i) for i in range(torch.cuda.device_count()))
    return PerplexityResult(
        ppl=perplexity(nlls),
        window_nlls=nlls,
        n_tokens=tokens.n_tokens,
        n_windows=n,
        n_windows_total=n_total,
        tail_tokens=tail_tokens(tokens.n_tokens, seqlen),
        seqlen=seqlen,
        batch_size=batch_size,
        bos_added=tokens.bos_added,
        tokenizer_name=tokens.tokenizer_name,
        tokenizer_sha256=tokens.tokenizer_sha256,
        dtype=str(dtype).removeprefix("torch."),
        device=str(device),
        dataset_sha256=dataset.sha256,
        dataset_source=dataset.source,
        canonical=dataset.canonical,
        partial=n < n_total,
        wall_time_s=wall,
        tokens_per_s=n * seqlen / wall if wall > 0 else float("inf"),
        peak_memory_bytes=peak,
        extra={"compiled": True} if compile_model else {},
    )
