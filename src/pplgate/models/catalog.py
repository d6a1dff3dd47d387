"""What ``pplgate variants`` prints: every registered kind, its params with types and defaults, what it measures."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

from pplgate.errors import VariantError
from pplgate.models.registry import _REGISTERED, BUILTIN_KINDS, entry_point_kinds, kind_class, known_kinds

# params that are not a plain typed value (documented in the kind's module)
STRUCTURED_PARAMS = {
    "calibration": "source string or {source|path, n_samples (128), seqlen (512), text_column}",
    "dampening_frac": "number (0.01)",
    "recipe": "list of {ModifierName: {args}}",
    "recipe_file": "path of a recipe YAML file",
    "require_all_linears": "boolean (true)",
    "entry": "'package.module:function' (required)",
    "params": "mapping of keyword arguments for the function",
    "config": "path of a file passed as config_path=",
    "ignore": "list of module names or 're:' patterns the quantizer keeps in full precision on purpose",
    "dtype": "auto, fp16, bf16 or fp32 (auto)",
    "quantization_config": "mapping: quant_method (bitsandbytes, torchao, quanto or fp8) and that method's fields, "
    "as transformers' config class takes them (required)",
    "quant_dtype": "fp16, bf16, fp32 or fp64: the dtype while llm-compressor calibrates (default: dtype; "
    "fp64 also runs GPTQ's solves in float64: the same weights on any CPU type and thread count)",
}


@dataclass
class KindInfo:
    kind: str
    origin: str  # "built-in", "entry point <dist>", "registered"
    summary: str
    params: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None


def _origin(kind: str) -> str:
    if kind in _REGISTERED:
        return "registered"
    if kind in BUILTIN_KINDS:
        return "built-in"
    ep = entry_point_kinds().get(kind)
    dist = getattr(getattr(ep, "dist", None), "name", None)
    return f"entry point ({dist})" if dist else "entry point"


def _type_name(t: type) -> str:
    return {bool: "boolean", int: "integer", str: "string"}.get(t, t.__name__)


def describe(kind: str) -> KindInfo:
    """One kind's params and summary (imports the kind's module; an import failure is reported, not raised)."""
    try:
        cls = kind_class(kind)
    except VariantError as exc:
        return KindInfo(kind, _origin(kind), "", error=str(exc))
    summary = cls.summary or " ".join((inspect.getdoc(cls) or "").split("\n\n")[0].split())
    params: list[dict[str, Any]] = []
    spec = {p.name: p for p in cls.params_spec}
    for name in cls.params_allowed if cls.params_allowed is not None else tuple(spec):
        p = spec.get(name)
        if p is not None and name not in STRUCTURED_PARAMS:
            params.append({"name": name, "type": _type_name(p.type), "default": p.default, "choices": list(p.choices)})
        else:
            params.append({"name": name, "type": STRUCTURED_PARAMS.get(name, "see the kind's docs")})
    return KindInfo(kind, _origin(kind), summary, params)


def catalog() -> list[KindInfo]:
    return [describe(k) for k in known_kinds()]


def format_catalog(infos: list[KindInfo]) -> str:
    lines: list[str] = []
    for info in infos:
        lines.append(f"{info.kind}  [{info.origin}]")
        if info.error:
            lines.append(f"    cannot load: {info.error}")
            continue
        lines.append(f"    {info.summary}")
        for p in info.params:
            if "default" in p:
                choices = f", one of {'/'.join(p['choices'])}" if p["choices"] else ""
                d = p["default"]
                default = "optional" if d is None else f"default {str(d).lower() if isinstance(d, bool) else d}"
                lines.append(f"    - {p['name']}: {p['type']} ({default}{choices})")
            else:
                lines.append(f"    - {p['name']}: {p['type']}")
        if not info.params:
            lines.append("    (no params)")
    return "\n".join(lines)
