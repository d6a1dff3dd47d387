"""What a quantized model holds quantized: the ``coverage`` line every quantized kind puts in its prepare info, and
the checks that refuse a silent wrong number (an eligible weight left in full precision; nothing quantized at all).

Counted in parameters over the decoder layers' weights (:func:`pplgate.models.layers.decoder_weights`: every Linear
and every fused 3-D expert tensor, counted alike; ``lm_head`` and the embeddings lie outside the decoder layers).
MoE routers (:data:`pplgate.models.layers.ROUTER_NAMES`) are not eligible: kept in full precision by default and
reported either way. A weight counts as quantized when its module says so (a compressed-tensors
``quantization_scheme`` with weights; a packed module with a ``qweight``, such as AutoAWQ's ``WQLinear_*``, or HQQ's
``W_q``; an integer or 8-bit float weight, such as bitsandbytes' ``Params4bit``/``Int8Params``; a quantized tensor
subclass of torchao or optimum-quanto), or, for a plain float weight, when it changed from the base model (``base``
digests: a fake-quantizing quantizer of the team's own) or its values sit on the checkpoint's integer grid (``grid``:
the fused experts transformers de-compresses from a compressed-tensors checkpoint). A Linear counts its
``out_features x in_features`` parameters, however its library packs them (bitsandbytes' 4-bit: two per byte).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from pplgate.errors import VariantError
from pplgate.models.layers import Weight, decoder_layers, decoder_weights

Digest = tuple[float, float, int]  # float64 sum, sum of squares, number of values
Named = list[tuple[str, int]]  # (weight name, parameters)


def _count(items: Named) -> str:
    n, params = len(items), sum(p for _, p in items)
    return f"{n} weight{'s' if n != 1 else ''}, {params:,} parameters"


def _names(items: Named, shown: int = 4) -> str:
    return ", ".join(n for n, _ in items[:shown]) + (", ..." if len(items) > shown else "")


def _percent(part: int, whole: int) -> str:
    """``part / whole`` rounded down to 0.1%: 100.0% only when every parameter is in ``part``."""
    return f"{math.floor(part / whole * 1000) / 10:.1f}%" if whole else "0.0%"


@dataclass
class Coverage:
    """The decoder weights of a quantized model by what they hold: ``(name, parameters)`` lists."""

    quantized: Named = field(default_factory=list)
    missing: Named = field(default_factory=list)  # eligible, left in full precision
    routers_kept: Named = field(default_factory=list)
    routers_quantized: Named = field(default_factory=list)
    ignored: Named = field(default_factory=list)
    ignored_by: str = "the entry's ignore list"

    @property
    def quantized_params(self) -> int:
        return sum(p for _, p in self.quantized)

    @property
    def eligible_params(self) -> int:
        return self.quantized_params + sum(p for _, p in self.missing)

    def text(self) -> str:
        """``quantized 131,072 of 131,072 decoder weight parameters (100.0%), routers kept (2 weights, 512 ...)``."""
        q, e = self.quantized_params, self.eligible_params
        out = f"quantized {q:,} of {e:,} decoder weight parameters ({_percent(q, e)})"
        if self.routers_kept:
            out += f", routers kept ({_count(self.routers_kept)})"
        if self.routers_quantized:
            out += f", routers quantized too ({_count(self.routers_quantized)})"
        if self.ignored:
            out += f", ignored by {self.ignored_by} ({_count(self.ignored)})"
        if self.missing:
            out += f", left unquantized: {_count(self.missing)} ({_names(self.missing)})"
        return out

    def check(self, kind: str, arch: str, *, allow_missing: bool = False, fix: str = "") -> None:
        """:class:`VariantError` when nothing is quantized, or (unless ``allow_missing``) an eligible weight is not."""
        if not self.quantized_params:
            raise VariantError(
                f"{kind}: nothing was quantized in this {arch} model: no decoder weight holds quantized values "
                f"({self.text()}); its number would be the float model's"
            )
        if self.missing and not allow_missing:
            raise VariantError(
                f"{kind}: {len(self.missing)} eligible decoder weights of this {arch} model were left unquantized "
                f"({_names(self.missing)}): pplgate reports no number for a partly quantized model"
                + (f"; {fix}" if fix else "")
            )


# -- what a module holds -------------------------------------------------------------------------------
def digest(t: torch.Tensor) -> Digest:
    """Float64 sum and sum of squares, and the size: any change of a weight's values moves it (no float64 copy)."""
    t = t.detach()
    total, norm = torch.sum(t, dtype=torch.float64), torch.linalg.vector_norm(t, dtype=torch.float64)
    return float(total), float(norm) ** 2, t.numel()


def weight_digests(model: torch.nn.Module) -> dict[str, Digest]:
    """:func:`digest` of every decoder weight and router, by name: the base a quantizer's result is compared with."""
    weights, routers = decoder_weights(model)
    return {w.name: digest(w.param) for w in (*weights, *routers)}


@dataclass(frozen=True)
class Grid:
    """A checkpoint's integer grid: at most ``levels`` distinct values per group of ``group`` input channels
    (0: per row)."""

    levels: int
    group: int = 0


def _qc_dict(config: Any) -> dict[str, Any]:
    qc = getattr(config, "quantization_config", None)
    qc = qc.to_dict() if hasattr(qc, "to_dict") else qc
    if isinstance(qc, Mapping) and isinstance(qc.get("quantization_config"), Mapping):
        qc = {**qc["quantization_config"], **{k: v for k, v in qc.items() if k != "quantization_config"}}
    return dict(qc) if isinstance(qc, Mapping) else {}


def checkpoint_grid(config: Any) -> Grid | None:
    """The integer weight grid a quantized checkpoint's ``quantization_config`` declares (None: none declared)."""
    qc = _qc_dict(config)
    for group in (qc.get("config_groups") or {}).values():  # compressed-tensors
        w = (group or {}).get("weights") or {}
        if w.get("type", "int") == "int" and isinstance(w.get("num_bits"), int):
            size = w.get("group_size") if w.get("strategy") == "group" else 0
            return Grid(2 ** w["num_bits"], size if isinstance(size, int) and size > 0 else 0)
    bits = qc.get("bits", qc.get("w_bit"))  # AutoAWQ / GPTQ formats
    if isinstance(bits, int):
        size = qc.get("group_size", qc.get("q_group_size", 0))
        return Grid(2**bits, size if isinstance(size, int) and size > 0 else 0)
    return None


def checkpoint_ignore(config: Any) -> tuple[list[str], bool]:
    """``(patterns, by_substring)``: the modules a checkpoint keeps in full precision (compressed-tensors' ``ignore``,
    names or ``re:`` patterns; AutoAWQ's ``modules_to_not_convert``, substrings of the name)."""
    qc = _qc_dict(config)
    if isinstance(qc.get("ignore"), list):
        return [str(p) for p in qc["ignore"]], False
    return [str(p) for p in qc.get("modules_to_not_convert") or ()], True


def _on_grid(w: Weight, grid: Grid, rows: int = 8) -> bool:
    """Do the first ``rows`` rows of each ``[out, in]`` matrix hold at most ``grid.levels`` values per group? A group
    too short to tell (no more values than levels) counts as on the grid: the checkpoint's word."""
    for m in w.matrices():
        sample = m[:rows].float()
        g = grid.group or sample.shape[1]
        if g <= grid.levels or sample.shape[1] % g:
            return True
        values = sample.reshape(-1, g).sort(dim=1).values
        if bool(((values.diff(dim=1) != 0).sum(dim=1) + 1 > grid.levels).any()):
            return False
    return True


# libraries whose tensor subclasses hold quantized weights (they report the float dtype they compute in)
QUANTIZED_TENSOR_LIBRARIES = ("torchao", "optimum")
PACKED_WEIGHTS = ("qweight", "W_q")  # AutoAWQ / GPTQ packed modules; HQQ's HQQLinear


def _held_quantized(w: Weight, base: Mapping[str, Digest] | None, grid: Grid | None) -> bool:
    scheme = getattr(w.module, "quantization_scheme", None)
    if scheme is not None and getattr(scheme, "weights", None) is not None:
        return True
    if type(w.param.data).__module__.split(".")[0] in QUANTIZED_TENSOR_LIBRARIES:  # torchao, optimum-quanto
        return True
    if not w.param.dtype.is_floating_point or w.param.element_size() == 1:  # int8 / uint8 / float8 storage
        return True
    if base is not None and w.name in base:
        return digest(w.param) != base[w.name]
    return grid is not None and _on_grid(w, grid)


def _packed_params(mod: torch.nn.Module) -> int:
    out_f, in_f = getattr(mod, "out_features", None), getattr(mod, "in_features", None)
    if isinstance(out_f, int) and isinstance(in_f, int):
        return out_f * in_f
    q = next(getattr(mod, n) for n in PACKED_WEIGHTS if isinstance(getattr(mod, n, None), torch.Tensor))
    bits = getattr(mod, "w_bit", getattr(mod, "bits", 4))
    return q.numel() * (32 // bits if q.dtype == torch.int32 else 1)


def _matches(full: str, mod: torch.nn.Module | None, patterns: Sequence[str], substring: bool) -> bool:
    for p in patterns:
        if p.startswith("re:"):
            if re.match(p[3:], full):
                return True
        elif (p in full) if substring else (p == full or any(c.__name__ == p for c in type(mod).__mro__)):
            return True
    return False


def model_coverage(
    model: torch.nn.Module,
    *,
    base: Mapping[str, Digest] | None = None,
    grid: Grid | None = None,
    ignore: Sequence[str] = (),
    ignore_by_substring: bool = False,
    ignored_by: str = "the entry's ignore list",
) -> Coverage:
    """What ``model``'s decoder weights hold (see the module doc). ``ignore``: module names or ``re:`` patterns
    (substrings with ``ignore_by_substring``) whose weights are not eligible. A ``base`` weight that is no longer a
    weight pplgate can read (its module replaced by an unknown one) counts as left unquantized."""
    layers = decoder_layers(model)
    prefix = next((n for n, m in model.named_modules() if m is layers), "layers")
    weights, routers = decoder_weights(model)
    cov = Coverage(ignored_by=ignored_by)
    seen: set[str] = set()

    def full(name: str) -> str:  # "layers.0.mlp.down_proj.weight" -> "model.layers.0.mlp.down_proj"
        return prefix + name.removeprefix("layers").rsplit(".", 1)[0]

    for w in weights:
        seen.add(w.name)
        linear = isinstance(w.module, torch.nn.Linear) and isinstance(getattr(w.module, "in_features", None), int)
        entry = (w.name, _packed_params(w.module) if linear else w.param.numel())  # bitsandbytes packs 4-bit
        if ignore and _matches(full(w.name), w.module, ignore, ignore_by_substring):
            cov.ignored.append(entry)
        else:
            (cov.quantized if _held_quantized(w, base, grid) else cov.missing).append(entry)
    for w in routers:
        seen.add(w.name)
        held = _held_quantized(w, base, None)
        (cov.routers_quantized if held else cov.routers_kept).append((w.name, w.param.numel()))
    for i, layer in enumerate(layers):
        for mname, mod in layer.named_modules():
            if any(isinstance(getattr(mod, n, None), torch.Tensor) for n in PACKED_WEIGHTS):
                name = f"layers.{i}.{mname}.weight"
                seen.add(name)
                cov.quantized.append((name, _packed_params(mod)))
    cov.missing += [(n, base[n][2]) for n in sorted(set(base or ()) - seen)]
    return cov


# -- the probe ------------------------------------------------------------------------------------------
@torch.no_grad()
def probe_logits(model: torch.nn.Module, n_tokens: int = 32) -> torch.Tensor:
    """The model's fp32 logits on a fixed short batch of token ids (seeded), on the CPU."""
    cfg = getattr(model.config, "text_config", None) or model.config
    ids = torch.randint(0, cfg.vocab_size, (1, n_tokens), generator=torch.Generator().manual_seed(0))
    device = next(model.parameters()).device
    return model(ids.to(device)).logits.float().cpu()


def check_changed(base: torch.Tensor, after: torch.Tensor, kind: str, arch: str) -> None:
    """A quantized model whose probe logits are bit-identical to the float model's is a :class:`VariantError`."""
    if base.shape == after.shape and torch.equal(base, after):
        raise VariantError(
            f"{kind}: nothing was quantized in this {arch} model: its logits on a {base.shape[-2]}-token probe batch "
            "are bit-identical to the float model's; its number would be the float model's"
        )
