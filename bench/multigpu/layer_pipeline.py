"""Pipelined scoring of a model split across GPUs by layers (a Llama-style ``model.model.layers`` stack).

With a plain ``device_map`` split, a forward pass runs the stages one after another, so at any time
one GPU works and the others wait. Here batch ``m`` runs on stage ``s`` while batch ``m+1`` runs on
stage ``s-1`` (a wavefront: every tick launches the stages from the last to the first, so a hand-off
copy never queues behind work that was launched after it). CUDA launches are asynchronous, so the GPUs
overlap; the host synchronises once, at the end.

The number cannot change: every batch holds the same windows as the plain path's batch (same
``batch_size``), runs through the same modules with the same arguments (captured once per batch
shape from the model's own forward), and the loss is pplgate's
:func:`~pplgate.protocol.windows.window_mean_nlls`. ``big_model.py --check-single`` compares the two.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from pplgate.protocol.windows import check_finite, window_mean_nlls


class _Captured(Exception):
    """Raised by the pre-hook on the first layer once the layer's arguments are captured."""


def to_device(obj: Any, device: torch.device) -> Any:
    """Tensors inside tuples/lists/dicts moved to ``device`` (other values unchanged)."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, tuple):
        return tuple(to_device(x, device) for x in obj)
    if isinstance(obj, list):
        return [to_device(x, device) for x in obj]
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    return obj


def layer_device(layer: torch.nn.Module) -> torch.device:
    """Where a layer computes: accelerate's execution device when hooked, else its parameters' device."""
    hook = getattr(layer, "_hf_hook", None)
    dev = getattr(hook, "execution_device", None)
    if dev is not None:
        return torch.device(f"cuda:{dev}" if isinstance(dev, int) else dev)
    return next(layer.parameters()).device


def stages_by_device(model: Any) -> list[list[int]]:
    """Consecutive decoder layers on the same device form a stage (the device_map's split)."""
    stages: list[list[int]] = []
    last = None
    for i, layer in enumerate(model.model.layers):
        dev = layer_device(layer)
        if dev != last:
            stages.append([])
            last = dev
        stages[-1].append(i)
    return stages


def even_stages(n_layers: int, n_stages: int) -> list[list[int]]:
    """``n_layers`` split into ``n_stages`` contiguous groups (the first ones get the remainder)."""
    base, extra = divmod(n_layers, n_stages)
    out, start = [], 0
    for s in range(n_stages):
        size = base + (s < extra)
        out.append(list(range(start, start + size)))
        start += size
    return [s for s in out if s]


def capture_layer_kwargs(model: Any, batch: torch.Tensor) -> dict[str, Any]:
    """The keyword arguments the model's own forward passes to its decoder layers for this batch shape.

    They depend on the shape only (causal mask, rotary cos/sin, positions), not on the token ids.
    Also checks that the first layer's input is exactly ``embed_tokens(input_ids)`` (true for Llama).
    """
    body = model.model
    seen: dict[str, Any] = {}

    def hook(_module: Any, args: tuple, kwargs: dict) -> None:
        seen["hidden"] = args[0] if args else kwargs["hidden_states"]
        seen["kwargs"] = {k: v for k, v in kwargs.items() if k != "hidden_states"}
        raise _Captured

    handle = body.layers[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        body(input_ids=batch, use_cache=False)
    except _Captured:
        pass
    finally:
        handle.remove()
    if "kwargs" not in seen:
        raise RuntimeError("the model's forward never reached model.model.layers[0]")
    if not torch.equal(seen["hidden"], body.embed_tokens(batch)):
        raise RuntimeError(
            "the first layer's input is not embed_tokens(input_ids): this pipeline supports Llama-style models"
        )
    return seen["kwargs"]


def _run_layers(layers: Sequence[torch.nn.Module], h: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
    for layer in layers:
        out = layer(h, **kwargs)
        h = out[0] if isinstance(out, tuple) else out
    return h


@torch.inference_mode()
def pipelined_window_nlls(
    model: Any,
    windows: torch.Tensor,
    *,
    batch_size: int,
    stages: list[list[int]] | None = None,
    loss_chunk_tokens: int | None = None,
) -> list[float]:
    """Per-window mean NLLs of ``windows [n, L]`` (as pplgate's engine computes them), stages overlapped.

    ``stages``: contiguous layer index groups covering every layer (default: by device).
    """
    body, head = model.model, model.get_output_embeddings()
    layers = body.layers
    stages = stages or stages_by_device(model)
    if [i for s in stages for i in s] != list(range(len(layers))):
        raise ValueError(f"stages must cover layers 0..{len(layers) - 1} in order, got {stages}")
    devices = [layer_device(layers[s[0]]) for s in stages]
    first = body.embed_tokens.weight.device
    windows_first, windows_last = windows.to(first), windows.to(devices[-1])  # no host copies in the loop
    starts = list(range(0, windows.shape[0], batch_size))
    kw_by_shape: dict[tuple[int, ...], list[dict[str, Any]]] = {}
    handoff: dict[tuple[int, int], torch.Tensor] = {}
    results: list[torch.Tensor | None] = [None] * len(starts)
    n_st = len(stages)
    for tick in range(len(starts) + n_st - 1):
        for s in reversed(range(n_st)):  # later stages first: their inputs were made in the previous tick
            m = tick - s
            if not 0 <= m < len(starts):
                continue
            lo = starts[m]
            batch = windows_first[lo : lo + batch_size]
            shape = tuple(batch.shape)
            if shape not in kw_by_shape:
                kw = capture_layer_kwargs(model, batch)
                kw_by_shape[shape] = [to_device(kw, d) for d in devices]
            if s == 0:
                h = body.embed_tokens(batch)
            else:
                h = handoff.pop((s - 1, m)).to(devices[s])
            h = _run_layers([layers[i] for i in stages[s]], h, kw_by_shape[shape][s])
            if s < n_st - 1:
                handoff[(s, m)] = h
            else:
                h = body.norm(h)
                results[m] = window_mean_nlls(
                    h, windows_last[lo : lo + batch_size], head, chunk_tokens=loss_chunk_tokens
                )
    out: list[float] = []
    for r in results:
        assert r is not None
        values = r.tolist()
        check_finite(values, offset=len(out))
        out.extend(values)
    return out
