"""The quantizer under test: group-wise round-to-nearest with a clipped range, in place.

pplgate calls it as ``quantize(model, tokenizer, calibration_texts, **params)`` (kind ``user``, entry
``clipped_rtn:quantize``) and measures what it returns.
"""

from __future__ import annotations

import torch


def fake_quantize(w: torch.Tensor, w_bit: int, group_size: int, clip_ratio: float) -> torch.Tensor:
    """Asymmetric group-wise round-to-nearest of ``w`` (rows x in_features), the range shrunk by ``clip_ratio``."""
    rows, cols = w.shape
    g = w.reshape(-1, group_size).float()
    hi = g.amax(dim=1, keepdim=True) * clip_ratio
    lo = g.amin(dim=1, keepdim=True) * clip_ratio
    qmax = 2**w_bit - 1
    scale = ((hi - lo).clamp(min=1e-5)) / qmax
    zero = (-lo / scale).round().clamp(0, qmax)
    q = ((g / scale).round() + zero).clamp(0, qmax)
    return ((q - zero) * scale).reshape(rows, cols).to(w.dtype)


@torch.no_grad()
def quantize(model, tokenizer, calibration_texts, *, w_bit: int = 4, group_size: int = 64, clip_ratio: float = 1.0):
    """Quantize every Linear of the decoder layers (embeddings and lm_head stay); returns the model."""
    del tokenizer, calibration_texts  # no calibration data needed
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and ".layers." in name:
            module.weight.copy_(fake_quantize(module.weight, w_bit, group_size, clip_ratio))
    return model
