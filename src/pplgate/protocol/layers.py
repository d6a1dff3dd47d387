"""Where a quantization moved the numbers: the relative output error of every decoder-layer module of a
model against the same module of its reference, on a fixed short batch.

**How.** The reference runs once on ``input_ids``; a forward hook on each of its measured modules calls
the model's module of the same name on the *same* inputs (the reference's), so the errors do not
accumulate from layer to layer: each says what that module's weights alone do. The error is
``||y_model - y_ref|| / ||y_ref||`` in fp32 (summed over the calls of a module called more than once).
The model itself never runs end to end.

**Which modules.** Inside each decoder layer (``<...>.layers.N.`` / ``h.N`` / ``blocks.N``, named
``layers.N.<path>``): every Linear of the reference (``nn.Linear`` or transformers' ``Conv1D``: attention
projections, MLP, experts stored as Linears, routers) and every module holding fused 3-D expert tensors
(transformers 5's MoE ``experts``), each against the model's module of the same name, whatever its class
(a quantized kernel's module). A fused module is
measured per expert, ``layers.N.mlp.experts.E``: the module is called with every token of the batch
routed to expert ``E`` alone (weight 1), so each expert is measured on the same inputs; if its forward
does not take ``(hidden_states, top_k_index, top_k_weights)``, the whole module's routed output is
measured instead, as ``layers.N.mlp.experts``.

**Never silently skipped.** A module in one model only, one the batch never reached (an expert Linear no
token was routed to) or one whose call failed gets ``nan`` with the reason in
:attr:`LayerProfile.unmeasured`; an output that is not finite gets ``inf``.

**Cost.** One reference forward plus one call of each measured module of the model: about two forward
passes of the batch; memory above the two models' weights is one forward's activations plus one
module's input and two outputs at a time (a fused module: one expert's). Measured: see
:func:`layer_profile`.
"""

from __future__ import annotations

import math
import re
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

_LAYER = re.compile(r"^(?:.*?\.)?(?:layers|h|blocks)\.(\d+)\.(.+)$")
_SIG = 4  # significant digits of a record


@dataclass
class LayerProfile:
    """``errors``: module name -> relative output error (``nan``: not measured, ``inf``: not finite);
    ``unmeasured``: module name -> why; ``time_s``: the wall time it took; ``n_tokens``: the batch."""

    errors: dict[str, float]
    unmeasured: dict[str, str] = field(default_factory=dict)
    time_s: float = 0.0
    n_tokens: int = 0


def _fused(mod: torch.nn.Module) -> bool:
    return any(p.dim() == 3 for n, p in mod.named_parameters(recurse=False) if "bias" not in n)


def _linear(mod: torch.nn.Module) -> bool:
    # transformers' Conv1D (GPT-2 and kin) is a Linear with its weight stored [in, out]
    return isinstance(mod, torch.nn.Linear) or type(mod).__name__ == "Conv1D"


def _measured(model: torch.nn.Module) -> dict[str, tuple[str, torch.nn.Module]]:
    found = [
        (f"layers.{m.group(1)}.{m.group(2)}", name, mod)
        for name, mod in model.named_modules()
        if (m := _LAYER.match(name)) and (_linear(mod) or _fused(mod))
    ]
    short = Counter(key for key, _, _ in found)
    return {key if short[key] == 1 else name: (name, mod) for key, name, mod in found}


def measured_modules(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """``layers.N.<path>`` -> module for every Linear (``nn.Linear``, transformers' ``Conv1D``) and fused-expert
    module of the decoder layers (the full module names where two stacks of layers would share those names,
    e.g. a vision tower's and the text's)."""
    return {key: mod for key, (_, mod) in _measured(model).items()}


def _first_tensor(out: Any) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out[0]


def _moved_to(x: Any, device: torch.device, dtype: torch.dtype) -> Any:
    if isinstance(x, torch.Tensor):
        return x.to(device=device, dtype=dtype) if x.is_floating_point() else x.to(device)
    if isinstance(x, (tuple, list)):
        return type(x)(_moved_to(v, device, dtype) for v in x)
    if isinstance(x, dict):
        return {k: _moved_to(v, device, dtype) for k, v in x.items()}
    return x


def _home(mod: torch.nn.Module, like: torch.Tensor) -> tuple[torch.device, torch.dtype]:
    """Where a module's inputs go: the device and dtype of its first floating parameter or buffer (a
    quantized kernel's module may hold integer weights and fp16 scales as buffers only), else ``like``'s."""
    tensors = [*mod.parameters(), *mod.buffers()]
    floating = [t for t in tensors if t.is_floating_point()]
    if not tensors:
        return like.device, like.dtype
    return tensors[0].device, (floating[0].dtype if floating else like.dtype)


class _Sums:
    """Per module: the sums of ``||y_model - y_ref||^2`` and ``||y_ref||^2`` over its calls (float64)."""

    def __init__(self) -> None:
        self.diff: dict[str, float] = {}
        self.ref: dict[str, float] = {}

    def merge(self, other: _Sums) -> None:
        for name in other.diff:
            self.diff[name] = self.diff.get(name, 0.0) + other.diff[name]
            self.ref[name] = self.ref.get(name, 0.0) + other.ref[name]

    def add(self, name: str, y_ref: torch.Tensor, y: torch.Tensor) -> None:
        r, q = y_ref.detach().float(), y.detach().to(y_ref.device).float()
        self.diff[name] = self.diff.get(name, 0.0) + float((q - r).pow(2).sum())
        self.ref[name] = self.ref.get(name, 0.0) + float(r.pow(2).sum())

    def error(self, name: str) -> float:
        d, r = self.diff[name], self.ref[name]
        if not (math.isfinite(d) and math.isfinite(r)):
            return math.inf
        return math.sqrt(d / r) if r > 0 else (0.0 if d == 0 else math.inf)


def _per_expert(name: str, ref: torch.nn.Module, mod: torch.nn.Module, args: tuple) -> _Sums:
    """Each expert ``E`` of a fused module on every token of the batch (routed to ``E`` alone, weight 1)."""
    sums = _Sums()
    hidden = args[0]
    flat = hidden.reshape(-1, hidden.shape[-1])
    n_experts = next(p for p in ref.parameters() if p.dim() == 3).shape[0]
    device, dtype = _home(mod, flat)
    for e in range(n_experts):
        index = torch.full((flat.shape[0], 1), e, dtype=torch.long, device=flat.device)
        weight = torch.ones((flat.shape[0], 1), dtype=flat.dtype, device=flat.device)
        y_ref = _first_tensor(ref(flat, index, weight))
        y = _first_tensor(mod(*_moved_to((flat, index, weight), device, dtype)))
        sums.add(f"{name}.{e}", y_ref, y)
    return sums


@torch.no_grad()
def layer_profile(reference: torch.nn.Module, model: torch.nn.Module, input_ids: torch.Tensor) -> LayerProfile:
    """The relative output error of each decoder-layer module of ``model`` against ``reference`` (see the
    module docstring), on ``input_ids`` (``[T]`` or ``[B, T]``; e.g. the first 256 tokens of the canonical
    stream, on the reference's device).

    Cost measured on CPU (torch 2.13, one thread), SmolLM2-135M-sized random Llama (30 layers, hidden 576,
    intermediate 1536, vocab 49152; 210 modules), fp32, 256 tokens: 1.75 s of CPU time against 1.0 s for the
    reference forward alone (the profile includes that forward); the peak RSS grew 5 MiB over that of the
    two models and a forward pass.
    """
    t0 = time.perf_counter()
    ids = input_ids if input_ids.dim() == 2 else input_ids.unsqueeze(0)
    refs = measured_modules(reference)
    named = dict(model.named_modules())  # the model's module of the same name, whatever its class (a kernel's)
    mods = {key: named[full] for key, (full, _) in _measured(reference).items() if full in named}
    mods.update({key: mod for key, mod in measured_modules(model).items() if key not in refs})
    unmeasured: dict[str, str] = {}
    for name in sorted(refs.keys() - mods.keys()):
        unmeasured[name] = "in the reference only"
    for name in sorted(mods.keys() - refs.keys()):
        unmeasured[name] = "in the model only (the reference has no module of that name)"
    sums = _Sums()
    whole: set[str] = set()  # fused modules measured whole (their forward is not the experts' interface)
    busy: list[str] = []  # the hook's own calls of a reference module do not measure again

    def hook(name: str):
        def run(ref: torch.nn.Module, args: tuple, kwargs: dict, out: Any) -> None:
            if name in unmeasured or busy:
                return
            mod = mods[name]
            busy.append(name)
            try:
                if _fused(ref) and name not in whole:
                    try:
                        sums.merge(_per_expert(name, ref, mod, args))
                        return
                    except (TypeError, IndexError, RuntimeError):
                        whole.add(name)
                device, dtype = _home(mod, _first_tensor(out))
                y = mod(*_moved_to(args, device, dtype), **_moved_to(kwargs, device, dtype))
                sums.add(name, _first_tensor(out), _first_tensor(y))
            except Exception as exc:  # named in the result, never raised mid-forward
                unmeasured[name] = f"its call failed: {type(exc).__name__}: {exc}"
            finally:
                busy.pop()

        return run

    handles = [m.register_forward_hook(hook(n), with_kwargs=True) for n, m in refs.items() if n in mods]
    try:
        reference(input_ids=ids)
    finally:
        for h in handles:
            h.remove()
    errors = {n: sums.error(n) for n in sums.diff if n not in unmeasured and n.rsplit(".", 1)[0] not in unmeasured}
    for name in refs.keys() & mods.keys():
        if name not in unmeasured and name not in sums.diff and f"{name}.0" not in sums.diff:
            unmeasured[name] = "not called by the batch (an expert no token was routed to?)"
    for name in unmeasured:
        errors[name] = math.nan
    return LayerProfile(dict(sorted(errors.items(), key=_order)), unmeasured, time.perf_counter() - t0, ids.numel())


def layer_errors(reference: torch.nn.Module, model: torch.nn.Module, input_ids: torch.Tensor) -> dict[str, float]:
    """:func:`layer_profile`'s errors alone (``nan`` where a module was not measured)."""
    return layer_profile(reference, model, input_ids).errors


def _order(item: tuple[str, Any]) -> tuple:
    m = re.match(r"^layers\.(\d+)\.(.*)$", item[0])
    return (int(m.group(1)), m.group(2)) if m else (math.inf, item[0])


def _round(x: float) -> float:
    return x if not math.isfinite(x) or x == 0 else round(x, _SIG - 1 - math.floor(math.log10(abs(x))))


_EXPERT = re.compile(r"^(layers\.\d+\..*experts)\.(\d+)((?:\..+)?)$")


def _expert_groups(errors: Mapping[str, float]) -> Iterator[tuple[str, list[str]]]:
    groups: dict[str, list[str]] = {}
    for name in errors:
        m = _EXPERT.match(name)
        if m:
            groups.setdefault(m.group(1) + m.group(3), []).append(name)
    yield from groups.items()


def summarize(errors: Mapping[str, float]) -> dict[str, float]:
    """The compact form for a record: 4 significant digits; the experts of one layer as
    ``layers.N.mlp.experts.max`` and ``.mean`` (``...experts.w1.max`` for experts stored as Linears),
    over the measured ones; an unmeasured expert stays, by name, as ``nan``."""
    out: dict[str, float] = {}
    grouped: set[str] = set()
    for key, names in _expert_groups(errors):
        grouped.update(names)
        vals = [errors[n] for n in names if not math.isnan(errors[n])]
        out[f"{key}.max"] = _round(max(vals)) if vals else math.nan
        out[f"{key}.mean"] = _round(sum(vals) / len(vals)) if vals else math.nan
        out.update({n: math.nan for n in names if math.isnan(errors[n])})
    out.update({n: _round(v) for n, v in errors.items() if n not in grouped})
    return dict(sorted(out.items(), key=_order))
