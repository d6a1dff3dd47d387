"""The model's structure as the quantized kinds see it: its config (read without weights), the decoder
layers whose Linears get quantized, which group sizes fit them, and a load-time quantizer to forget."""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from pplgate.errors import VariantError
from pplgate.models.source import ModelSource


@functools.lru_cache(maxsize=16)
def _load_config(path_or_id: str, gguf_file: str | None, revision: str | None):
    from transformers import AutoConfig

    kw: dict[str, Any] = {}
    if gguf_file:
        kw["gguf_file"] = gguf_file
    if revision:
        kw["revision"] = revision
    return AutoConfig.from_pretrained(path_or_id, **kw)


def load_config(src: ModelSource):
    """The model's ``PretrainedConfig`` (cheap: no weights are read; a GGUF's metadata is parsed once)."""
    return _load_config(src.path_or_id, src.gguf_file, src.revision)


def architecture(config: Any) -> str:
    """The architecture as errors name it: ``config.model_type`` (a text config's own), plus Falcon's layout."""
    cfg = getattr(config, "text_config", None) or config
    name = str(getattr(cfg, "model_type", None) or getattr(config, "model_type", None) or type(config).__name__)
    if name == "falcon":
        name += " (new decoder layout)" if getattr(cfg, "new_decoder_architecture", False) else " (old decoder layout)"
    return name


def linear_in_features(config) -> dict[str, int]:
    """Input widths of the decoder Linears implied by a (text) config: role -> in_features."""
    cfg = getattr(config, "text_config", None) or config
    out: dict[str, int] = {}
    hidden = getattr(cfg, "hidden_size", None)
    if isinstance(hidden, int):
        out["hidden_size (q/k/v/gate/up in_features)"] = hidden
    inter = getattr(cfg, "intermediate_size", None) or getattr(cfg, "ffn_dim", None)
    if isinstance(inter, int):
        out["intermediate_size (down_proj in_features)"] = inter
    heads = getattr(cfg, "num_attention_heads", None)
    head_dim = getattr(cfg, "head_dim", None) or (hidden // heads if isinstance(hidden, int) and heads else None)
    if isinstance(heads, int) and isinstance(head_dim, int):
        out["num_attention_heads*head_dim (o_proj in_features)"] = heads * head_dim
    return out


def group_size_problems(config, group_size: int) -> list[str]:
    """Human-readable reasons why ``group_size`` does not divide the decoder Linears' in_features."""
    if group_size == -1:
        return []
    return [
        f"{name} = {value} is not a multiple of q_group_size {group_size}"
        for name, value in linear_in_features(config).items()
        if value % group_size
    ]


def valid_group_sizes(config, smallest: int = 16) -> list[int]:
    """The power-of-two group sizes (largest first, down to ``smallest``) that divide every decoder Linear's
    in_features: the sizes quantization kernels take (a divisor such as 192 of 576 is valid arithmetic, but
    no kernel packs it)."""
    widths = list(linear_in_features(config).values())
    if not widths:
        return []
    low = math.gcd(*widths) & -math.gcd(*widths)  # the largest power of two dividing every width
    out, g = [], low
    while g >= smallest:
        out.append(g)
        g //= 2
    return out


def group_size_fix(config, whole: str | None = "-1 (whole row)") -> str:
    """``valid group sizes for in_features 576, 1536: 64, 32, 16, or -1 (whole row)``: what an impossible group
    size's error offers instead (``whole``: the kind's no-groups setting, None when it has none)."""
    widths = sorted(set(linear_in_features(config).values()))
    sizes = [str(g) for g in valid_group_sizes(config)] + ([whole] if whole else [])
    listed = ", ".join(sizes[:-1]) + (", or " if len(sizes) > 1 else "") + sizes[-1] if sizes else "none"
    return f"valid group sizes for in_features {', '.join(map(str, widths))}: {listed}"


_LAYER_PATHS = ("model.layers", "model.decoder.layers", "transformer.h", "gpt_neox.layers", "transformer.blocks")


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The decoder blocks (the Linears AWQ/RTN quantize live there; lm_head and embeddings do not)."""
    for path in _LAYER_PATHS:
        obj: Any = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if isinstance(obj, torch.nn.ModuleList) and len(obj) > 0:
            return obj
    lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList)]
    if not lists:
        raise VariantError(f"cannot find the decoder layers of {type(model).__name__}")
    return max(lists, key=len)


def strip_load_quantization(model: torch.nn.Module) -> None:
    """Forget a load-time quantizer (a GGUF is de-quantized on load): the weights are plain floats.

    Left in place, ``config.quantization_config = {quant_method: gguf}`` and ``model.hf_quantizer``
    make ``save_pretrained`` and AutoAWQ treat the model as already quantized.
    """
    cfg = getattr(model, "config", None)
    qc = getattr(cfg, "quantization_config", None)
    method = qc.get("quant_method") if isinstance(qc, Mapping) else getattr(qc, "quant_method", None)
    if qc is not None and str(getattr(method, "value", method)).lower() == "gguf":
        del cfg.quantization_config
        if getattr(model, "hf_quantizer", None) is not None:
            model.hf_quantizer = None
        if hasattr(model, "is_quantized"):
            try:
                model.is_quantized = False
            except AttributeError:  # a read-only property in some versions
                pass


# MoE routers (a Linear or a 2-D weight named so inside a decoder layer): kept in full precision, as
# llm-compressor's and AutoAWQ's recipes keep them
ROUTER_NAMES = ("gate", "router", "shared_expert_gate")


@dataclass(frozen=True)
class Weight:
    """One quantizable weight of a decoder layer: a Linear's ``[out, in]`` weight, or a fused expert tensor
    (transformers 5 stores MoE experts as one 3-D parameter: ``[experts, out, in]``, or ``[experts, in, out]``
    where ``transposed``)."""

    name: str
    param: torch.nn.Parameter
    transposed: bool = False
    module: torch.nn.Module | None = field(default=None, compare=False, repr=False)  # the module holding it

    @property
    def experts(self) -> int:
        return self.param.shape[0] if self.param.dim() == 3 else 0

    def matrices(self) -> list[torch.Tensor]:
        """The ``[out, in]`` matrices (views): the weight itself, or one per expert."""
        if self.param.dim() == 2:
            return [self.param.data]
        return [m.T if self.transposed else m for m in self.param.data.unbind(0)]


def _transposed(mod: torch.nn.Module, pname: str, p: torch.Tensor, hidden: int | None, where: str) -> bool:
    """Is a fused expert tensor stored ``[experts, in, out]``? transformers' own flag where the class has one,
    else the hidden size: the input of gate/up projections, the output of the down projection."""
    flag = getattr(mod, "is_transposed", None)
    if isinstance(flag, bool):
        return flag
    a, b = p.shape[1], p.shape[2]
    down = "down" in pname  # the down projection's output, the others' input, is the hidden size
    out_in = (a if down else b) == hidden  # [experts, out, in]
    in_out = (b if down else a) == hidden  # [experts, in, out]
    if out_in != in_out:
        return in_out
    raise VariantError(
        f"{where}: cannot tell whether the fused expert tensor {tuple(p.shape)} is [experts, out, in] or "
        "[experts, in, out]; pplgate never quantizes a tensor along the wrong axis (report the architecture)"
    )


def decoder_weights(model: torch.nn.Module) -> tuple[list[Weight], list[Weight]]:
    """``(weights to quantize, router weights kept)`` of the decoder layers: every Linear's weight and every
    fused 3-D expert tensor, counted alike; routers (:data:`ROUTER_NAMES`) are kept in full precision."""
    cfg = getattr(model, "config", None)
    cfg = getattr(cfg, "text_config", None) or cfg
    hidden = getattr(cfg, "hidden_size", None)
    weights: list[Weight] = []
    kept: list[Weight] = []
    for i, layer in enumerate(decoder_layers(model)):
        for mname, mod in layer.named_modules():
            where = f"layers.{i}.{mname}" if mname else f"layers.{i}"
            if mname.rsplit(".", 1)[-1] in ROUTER_NAMES:
                params = mod.named_parameters(recurse=False)
                kept += [Weight(f"{where}.{n}", p, module=mod) for n, p in params if p.dim() >= 2]
                continue
            if isinstance(mod, torch.nn.Linear):
                weights.append(Weight(f"{where}.weight", mod.weight, module=mod))
                continue
            for pname, p in mod.named_parameters(recurse=False):
                if p.dim() == 3 and "bias" not in pname:
                    name = f"{where}.{pname}"
                    weights.append(Weight(name, p, _transposed(mod, pname, p, hidden, name), mod))
    return weights, kept
