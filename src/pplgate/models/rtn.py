"""``rtn``: round-to-nearest group-wise weight quantization (fake-quantized, pure torch).

Every ``nn.Linear`` inside the decoder layers is quantized (not ``lm_head``, not the embeddings —
the same set AutoAWQ quantizes), and so is every fused 3-D expert tensor of a mixture-of-experts layer
(transformers 5 stores experts that way, not as Linears): each expert's ``[out, in]`` matrix gets the
same numbers as if it were a Linear. MoE routers stay in full precision.
The math is AutoAWQ's ``pseudo_quantize_tensor``:

* per group of ``q_group_size`` consecutive input channels of one output row (``-1``: whole row);
* ``zero_point=True`` (asymmetric): ``scale = max(max-min, 1e-5) / (2^b-1)``,
  ``zero = clamp(-round(min/scale), 0, 2^b-1)``, ``q = clamp(round(w/scale) + zero, 0, 2^b-1)``,
  ``w' = (q - zero) * scale``;
* ``zero_point=False`` (symmetric): ``scale = max(|w|max, 1e-5) / (2^(b-1)-1)``,
  ``w' = clamp(round(w/scale), -2^(b-1), 2^(b-1)-1) * scale``.

The quantization math runs in fp32 (whatever the load dtype), then the de-quantized weights are
stored in the compute dtype (param ``dtype``: ``auto`` = fp16 on CUDA, fp32 on CPU). The model is
loaded fresh in that dtype, so the gate's cached fp model is never modified.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import torch

from pplgate.errors import VariantError
from pplgate.models.coverage import Coverage, check_changed, probe_logits
from pplgate.models.layers import (
    architecture,
    decoder_layers,
    decoder_weights,
    group_size_fix,
    group_size_problems,
)
from pplgate.models.variant import DTYPE_PARAM, ModelContext, Param, PreparedModel, Variant

RTN_SPEC = (Param("w_bit", int, 4), Param("q_group_size", int, 128), Param("zero_point", bool, True), DTYPE_PARAM)
RTN_PARAMS = tuple(p.name for p in RTN_SPEC)


def pseudo_quantize_tensor(
    w: torch.Tensor, w_bit: int = 4, group_size: int = 128, zero_point: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Fake-quantize a 2-D weight ``[out, in]`` group-wise; returns ``(w_dequant, scales, zeros)``.

    ``scales``/``zeros`` have shape ``[out, in // group_size]`` (``zeros`` is None when symmetric).
    The result has ``w``'s dtype; the arithmetic is done in fp32.
    """
    if w.dim() != 2:
        raise ValueError(f"expected a 2-D weight, got shape {tuple(w.shape)}")
    if not 1 <= w_bit <= 16:
        raise ValueError(f"w_bit must be in 1..16, got {w_bit}")
    out_f, in_f = w.shape
    g = in_f if group_size == -1 else group_size
    if g <= 0 or in_f % g:
        raise ValueError(f"in_features {in_f} is not a multiple of q_group_size {group_size}")
    x = w.detach().to(torch.float32).reshape(-1, g)
    if torch.isnan(x).any():
        raise ValueError("weight contains NaN")
    if zero_point:
        max_int, min_int = 2**w_bit - 1, 0
        max_val = x.amax(dim=1, keepdim=True)
        min_val = x.amin(dim=1, keepdim=True)
        scales = (max_val - min_val).clamp(min=1e-5) / max_int
        zeros = (-torch.round(min_val / scales)).clamp_(min_int, max_int)
        q = (torch.clamp(torch.round(x / scales) + zeros, min_int, max_int) - zeros) * scales
        zeros_out: torch.Tensor | None = zeros.view(out_f, -1)
    else:
        if w_bit < 2:
            raise ValueError("symmetric quantization needs w_bit >= 2")
        max_int, min_int = 2 ** (w_bit - 1) - 1, -(2 ** (w_bit - 1))
        scales = x.abs().amax(dim=1, keepdim=True).clamp(min=1e-5) / max_int
        q = torch.clamp(torch.round(x / scales), min_int, max_int) * scales
        zeros_out = None
    return q.reshape(out_f, in_f).to(w.dtype), scales.view(out_f, -1), zeros_out


@torch.no_grad()
def rtn_quantize_model(model: torch.nn.Module, w_bit: int, group_size: int, zero_point: bool) -> dict[str, Any]:
    """Replace, in place, every quantizable decoder weight (:func:`pplgate.models.layers.decoder_weights`:
    Linears and fused 3-D expert tensors, each expert's ``[out, in]`` matrix exactly as if it were a Linear)
    by its RTN fake-quant. Routers stay in full precision. Returns the counts and the coverage; a model
    with nothing to quantize, or whose weights this leaves unchanged, is a :class:`VariantError`."""
    weights, kept = decoder_weights(model)
    if not weights:
        raise VariantError(f"no nn.Linear or fused expert tensor found in the decoder layers of {type(model).__name__}")
    n_params = changed = 0
    for w in weights:
        for m in w.matrices():
            in_f = m.shape[1]
            if group_size != -1 and in_f % group_size:
                raise VariantError(
                    f"{w.name.removesuffix('.weight')}: in_features {in_f} is not a multiple of q_group_size "
                    f"{group_size}"
                )
            wq, _, _ = pseudo_quantize_tensor(m, w_bit, group_size, zero_point)
            changed += int((wq != m).sum())
            m.copy_(wq)
        n_params += w.param.numel()
    if changed == 0:
        raise VariantError(
            f"rtn changed no weight of {type(model).__name__} ({architecture(model.config)}): its weights already sit "
            f"on the {w_bit}-bit grid (a model quantized before?); nothing was quantized, the measurement would be "
            "the float model's"
        )
    experts = [w for w in weights if w.experts]
    coverage = Coverage(
        quantized=[(w.name, w.param.numel()) for w in weights], routers_kept=[(w.name, w.param.numel()) for w in kept]
    )
    return {
        "n_linears": len(weights) - len(experts),
        "n_expert_tensors": len(experts),
        "n_quantized_params": n_params,
        "n_layers": len(decoder_layers(model)),
        "coverage": coverage.text(),
    }


class RtnVariant(Variant):
    """Round-to-nearest weight-only quantization; params ``w_bit`` (4), ``q_group_size`` (128),
    ``zero_point`` (True), ``dtype`` (``auto``)."""

    kind = "rtn"
    summary = "pplgate's round-to-nearest weight quantization (AutoAWQ's pseudo_quantize_tensor), decoder Linears"
    params_spec = RTN_SPEC

    def __init__(self, params: Mapping[str, Any] | None = None) -> None:
        super().__init__(params)
        self.w_bit: int = self.values["w_bit"]
        self.group_size: int = self.values["q_group_size"]
        self.zero_point: bool = self.values["zero_point"]
        if not 2 <= self.w_bit <= 8:
            raise VariantError(f"rtn: w_bit must be in 2..8, got {self.w_bit}")
        if self.group_size != -1 and self.group_size <= 0:
            raise VariantError(f"rtn: q_group_size must be positive or -1 (whole row), got {self.group_size}")
        self.dtype_param: str = self.values["dtype"]

    def fingerprint(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "w_bit": self.w_bit,
            "q_group_size": self.group_size,
            "zero_point": self.zero_point,
            "dtype": self.dtype_param,
            "scope": "decoder-layer Linears (not lm_head/embeddings)",
            "math": "autoawq pseudo_quantize_tensor, fp32 arithmetic",
        }

    def check(self, ctx: ModelContext) -> None:
        ctx.dtype(self.dtype_param)
        try:
            config = ctx.config()
        except Exception:  # unreadable config: prepare() checks the real modules
            return
        problems = group_size_problems(config, self.group_size)
        if problems:
            raise VariantError(
                f"rtn q_group_size {self.group_size} does not fit {ctx.source.describe()}: "
                + "; ".join(problems)
                + f"; {group_size_fix(config)}"
            )

    def prepare(self, ctx: ModelContext) -> PreparedModel:
        self.ensure_checked(ctx)
        dtype = ctx.dtype(self.dtype_param)
        t0 = time.perf_counter()
        model = ctx.load(dtype, fresh=True)
        t_load = time.perf_counter() - t0
        t1 = time.perf_counter()
        base = probe_logits(model)
        stats = rtn_quantize_model(model, self.w_bit, self.group_size, self.zero_point)
        check_changed(base, probe_logits(model), self.kind, architecture(model.config))
        t_quant = time.perf_counter() - t1
        info = {"dtype": dtype, "load_time_s": t_load, "quantize_time_s": t_quant, **stats}
        return PreparedModel(model=model, origin="quantized", prepare_time_s=time.perf_counter() - t0, info=info)
