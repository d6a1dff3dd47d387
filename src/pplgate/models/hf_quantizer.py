"""``transformers``: the quantizers people load through transformers' ``quantization_config``, measured as loaded.

params: ``quantization_config`` (a mapping: ``quant_method`` and that method's fields, as transformers' config class
takes them) and ``dtype`` (``auto``). The model is loaded with ``from_pretrained(..., quantization_config=...)``
onto the entry's device, so what is measured is the library's own modules and kernels (bitsandbytes'
``Linear4bit``/``Linear8bitLt``, torchao's tensor subclasses, quanto's ``QLinear``, transformers' FP8 Linears),
never a de-quantized copy. A GGUF source is de-quantized once and written as a float checkpoint to a temporary
folder first (transformers quantizes at load only from a checkpoint).

================  ==========================  ==================================================  ===========
quant_method      library (extra)             fields                                               devices
================  ==========================  ==================================================  ===========
``bitsandbytes``  bitsandbytes (``[bnb]``)    ``BitsAndBytesConfig``'s (``load_in_4bit`` with      CPU, CUDA
                                              ``bnb_4bit_quant_type: nf4``, or ``load_in_8bit``)
``torchao``       torchao (``[torchao]``)     ``quant_type`` (a ``torchao.quantization`` config     CPU, CUDA
                                              class) and its fields; ``TorchAoConfig``'s own
``quanto``        optimum-quanto             ``QuantoConfig``'s (``weights: int4``...)             CPU, CUDA
                  (``[quanto]``)
``fp8``           transformers               ``FineGrainedFP8Config``'s                            CUDA
================  ==========================  ==================================================  ===========

torchao fields by type: a ``torch.dtype`` is written by name (``int4``, ``bfloat16``), an enum by value
(``int4_packing_format: tile_packed_to_4d``), ``granularity`` as ``per_tensor``, ``per_row``, ``{per_axis: 0}`` or
``{per_group: 64}``. The fingerprint holds the library's version and the full config as transformers resolves it
(its ``to_dict()``: every default written out). Nothing is cached: these libraries quantize while loading, in about
the time a cache read would take, and torchao's and quanto's models do not serialize to safetensors.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pplgate.errors import VariantError
from pplgate.models.coverage import check_changed, model_coverage, probe_logits
from pplgate.models.failures import library_boundary
from pplgate.models.hashing import library_versions
from pplgate.models.layers import architecture
from pplgate.models.variant import DTYPE_PARAM, ModelContext, PreparedModel, Variant

NOT_CACHED = "not cached: the library quantizes while transformers loads the model"


@dataclass(frozen=True)
class Method:
    """A ``quant_method`` this kind loads: its library, the pplgate extra, transformers' config class, devices."""

    dist: str
    module: str
    extra: str | None
    config_class: str
    devices: tuple[str, ...]


METHODS = {
    "bitsandbytes": Method("bitsandbytes", "bitsandbytes", "bnb", "BitsAndBytesConfig", ("cpu", "cuda")),
    "torchao": Method("torchao", "torchao", "torchao", "TorchAoConfig", ("cpu", "cuda")),
    "quanto": Method("optimum-quanto", "optimum.quanto", "quanto", "QuantoConfig", ("cpu", "cuda")),
    "fp8": Method("transformers", "transformers", None, "FineGrainedFP8Config", ("cuda",)),
}
# quant_method values that name something else: what to write instead
OTHER_ROUTES = {
    "bnb": "write quant_method: bitsandbytes",
    "optimum-quanto": "write quant_method: quanto",
    "hqq": "transformers 5.17's HqqConfig route raises NotImplementedError: use kind hqq (HQQ's own API)",
    "compressed-tensors": "that is a checkpoint format: measure the checkpoint with kind hf-checkpoint",
    "awq": "AWQ quantizes with calibration: use kind awq or llmc-recipe (a saved AWQ checkpoint: awq-checkpoint)",
    "gptq": "GPTQ quantizes with calibration: use kind gptq (a saved GPTQ checkpoint: hf-checkpoint)",
}
# fields of the config classes that are not the method's to set here
INTERNAL_FIELDS = {"self", "kwargs", "quant_method"}
GRANULARITIES = {"per_tensor": "PerTensor", "per_row": "PerRow", "per_axis": "PerAxis", "per_group": "PerGroup"}


def _config_class(method: Method) -> Any:
    from transformers.utils import quantization_config as qc

    return getattr(qc, method.config_class)


def config_fields(method: Method) -> list[str]:
    """The keyword arguments transformers' config class of ``method`` takes (besides ``quant_method``)."""
    params = inspect.signature(_config_class(method).__init__).parameters
    return [n for n, p in params.items() if n not in INTERNAL_FIELDS and p.kind is not p.VAR_KEYWORD]


def missing_library(method_name: str) -> str | None:
    """Why ``method_name``'s library cannot be used (not installed; nothing imported), else None."""
    method = METHODS[method_name]
    if importlib.util.find_spec(method.module.split(".")[0]) is not None and library_versions(method.dist)[method.dist]:
        return None
    install = f"pip install 'pplgate[{method.extra}]'" if method.extra else f"pip install {method.dist}"
    return f"quant_method {method_name} needs {method.dist}, which is not installed: {install}"


def _torchao_value(name: str, value: Any, default: Any) -> Any:
    """A YAML value for the torchao config field ``name`` as the field's type takes it (see the module doc)."""
    import enum

    import torch

    if name == "granularity":
        from torchao.quantization import granularity as g

        if isinstance(value, str) and value in ("per_tensor", "per_row"):
            return getattr(g, GRANULARITIES[value])()
        if isinstance(value, Mapping) and len(value) == 1:
            ((key, arg),) = value.items()
            if key in ("per_axis", "per_group") and isinstance(arg, int) and not isinstance(arg, bool):
                return getattr(g, GRANULARITIES[key])(arg)
        raise ValueError(f"granularity must be per_tensor, per_row, {{per_axis: N}} or {{per_group: N}}, got {value!r}")
    if isinstance(default, torch.dtype) or (default is None and name.endswith("dtype") and isinstance(value, str)):
        dtype = getattr(torch, value, None) if isinstance(value, str) else None
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"{name} must name a torch dtype (e.g. int4, int8, bfloat16), got {value!r}")
        return dtype
    if isinstance(default, enum.Enum):  # by name (mapping_type: asymmetric) or by string value (tile_packed_to_4d)
        members = {**{str(m.value).lower(): m for m in type(default)}, **{m.name.lower(): m for m in type(default)}}
        if str(value).lower() not in members:
            raise ValueError(f"{name} must be one of {', '.join(m.name.lower() for m in type(default))}, got {value!r}")
        return members[str(value).lower()]
    return value


def torchao_config(fields: Mapping[str, Any]) -> Any:
    """``TorchAoConfig`` for ``fields`` (``quant_type`` + its fields + TorchAoConfig's own); ValueError says why not."""
    import dataclasses

    import torchao.quantization as tq
    from torchao.core.config import AOBaseConfig
    from transformers import TorchAoConfig

    own = set(config_fields(METHODS["torchao"])) - {"quant_type"}
    name = fields.get("quant_type")
    cls = getattr(tq, name, None) if isinstance(name, str) else None
    if not (isinstance(cls, type) and issubclass(cls, AOBaseConfig)):
        known = sorted(n for n in dir(tq) if n.endswith("Config") and isinstance(getattr(tq, n), type))
        raise ValueError(f"quant_type must name a torchao.quantization config class ({', '.join(known)}), got {name!r}")
    taken = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(fields) - own - {"quant_type"} - set(taken))
    if unknown:
        raise ValueError(
            f"{name} takes no field {', '.join(unknown)}; its fields: {', '.join(taken)}; TorchAoConfig's: "
            f"{', '.join(sorted(own))}"
        )
    defaults = cls()
    kwargs = {k: _torchao_value(k, v, getattr(defaults, k)) for k, v in fields.items() if k in taken}
    return TorchAoConfig(quant_type=cls(**kwargs), **{k: v for k, v in fields.items() if k in own})


def device_problem(method: str, config: Any, device: str, dtype: str) -> str | None:
    """Why ``config`` cannot run on ``device`` in ``dtype`` (the fix named), found before any work; else None."""
    if method == "bitsandbytes" and device == "cuda":
        import bitsandbytes.cextension as ce
        import torch

        if type(ce.lib).__name__ == "ErrorHandlerMockBNBNativeLibrary":  # its native library did not load
            why = " ".join(str(getattr(ce.lib, "error_msg", "")).split())[:200]
            return (
                f"bitsandbytes {library_versions('bitsandbytes')['bitsandbytes']} has no CUDA backend for this torch "
                f"(CUDA {torch.version.cuda}): {why}; install a bitsandbytes build with kernels for it"
            )
    if method == "fp8" and importlib.util.find_spec("kernels") is None:
        return (
            "transformers' FP8 Linear loads its Triton kernel from the hub through the kernels package, which is not "
            "installed: pip install kernels (with hub access), or measure FP8 with quant_method: torchao, quant_type: "
            "Float8DynamicActivationFloat8WeightConfig"
        )
    if method == "torchao" and type(config.quant_type).__name__ == "Int4WeightOnlyConfig":
        fmt = config.quant_type.int4_packing_format
        fmt = str(getattr(fmt, "value", fmt))
        if device == "cpu":
            return (
                "torchao's Int4WeightOnlyConfig has no CPU kernel (its int4 packings need CUDA); on CPU write "
                "quant_type: IntxWeightOnlyConfig, weight_dtype: int4, granularity: {per_group: 64}"
            )
        if fmt in ("plain", "preshuffled") and importlib.util.find_spec("mslk") is None:
            return (
                f"torchao's Int4WeightOnlyConfig with int4_packing_format {fmt} needs mslk, which is not installed: "
                "pip install mslk-cuda, or write int4_packing_format: tile_packed_to_4d (torch's own int4 kernel, "
                "with dtype: bf16)"
            )
        if fmt == "tile_packed_to_4d" and dtype != "bf16":
            return f"torchao's int4 packing tile_packed_to_4d runs in bfloat16 only: write dtype: bf16 (not {dtype})"
    return None


class HfQuantizerVariant(Variant):
    """A model quantized by transformers' ``quantization_config`` at load (see the module doc for the methods)."""

    kind = "transformers"
    summary = (
        "from_pretrained(quantization_config=...): bitsandbytes, torchao, quanto or fp8, the library's own modules "
        f"measured ({NOT_CACHED})"
    )
    params_spec = (DTYPE_PARAM,)
    params_allowed = ("quantization_config", "dtype")

    def __init__(self, params: Mapping[str, Any] | None = None) -> None:
        super().__init__(params)
        self.dtype_param: str = self.values["dtype"]
        qc = self.params.get("quantization_config")
        where = f"{self.kind}: quantization_config"
        if not isinstance(qc, Mapping) or not qc:
            raise VariantError(
                f"{where} is required: a mapping with quant_method ({', '.join(METHODS)}) and that method's fields, "
                f"got {qc!r}"
            )
        method = qc.get("quant_method")
        if not isinstance(method, str) or method not in METHODS:
            hint = OTHER_ROUTES.get(str(method).lower(), "")
            raise VariantError(
                f"{where}: unknown quant_method {method!r}; this kind loads {', '.join(METHODS)}"
                + (f" ({hint})" if hint else "")
            )
        self.method_name: str = method
        self.method = METHODS[method]
        self.fields: dict[str, Any] = {k: v for k, v in qc.items() if k != "quant_method"}
        if method == "torchao":
            if not isinstance(self.fields.get("quant_type"), str):
                raise VariantError(
                    f"{where}: torchao needs quant_type, the name of a torchao.quantization config class "
                    f"(e.g. Int8WeightOnlyConfig, IntxWeightOnlyConfig), got {self.fields.get('quant_type')!r}"
                )
        else:
            taken = config_fields(self.method)
            unknown = sorted(set(self.fields) - set(taken))
            if unknown:
                raise VariantError(
                    f"{where}: {self.method.config_class} ({method}) takes no field {', '.join(unknown)}; its fields: "
                    f"{', '.join(taken)}"
                )
        bits = [self.fields.get(f) is True for f in ("load_in_4bit", "load_in_8bit")]
        if method == "bitsandbytes" and bits[0] == bits[1]:
            raise VariantError(
                f"{where}: bitsandbytes needs exactly one of load_in_4bit: true (with bnb_4bit_quant_type: nf4 or fp4) "
                "and load_in_8bit: true (LLM.int8)"
            )
        self._config: Any = None

    def config(self) -> Any:
        """transformers' config object for the entry (built once; the library must be installed)."""
        if self._config is None:
            problem = missing_library(self.method_name)
            if problem:
                raise VariantError(f"{self.kind}: {problem}")
            try:
                if self.method_name == "torchao":
                    self._config = torchao_config(self.fields)
                else:
                    self._config = _config_class(self.method)(**self.fields)
            except (TypeError, ValueError, AssertionError) as exc:
                raise VariantError(f"{self.kind}: quantization_config ({self.method_name}): {exc}") from exc
        return self._config

    def resolved(self) -> dict[str, Any]:
        """The config as transformers resolves it (every default written out), JSON-plain."""
        return json.loads(json.dumps(self.config().to_dict(), sort_keys=True, default=str))

    def fingerprint(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "quantization_config": self.resolved(),
            "dtype": self.dtype_param,
            "libraries": library_versions(*dict.fromkeys((self.method.dist, "transformers"))),
        }

    def check(self, ctx: ModelContext) -> None:
        dtype = ctx.dtype(self.dtype_param)
        device = ctx.torch_device.type
        if device not in self.method.devices:
            raise VariantError(
                f"{self.kind}: quant_method {self.method_name} runs on {' and '.join(self.method.devices)} only, not "
                f"on {device}: measure it in a profile with device: cuda"
            )
        problem = device_problem(self.method_name, self.config(), device, dtype)
        if problem:
            raise VariantError(f"{self.kind}: {problem}")

    def _ignore(self) -> list[str]:
        cfg = self.config()
        names = getattr(cfg, "modules_to_not_convert", None) or getattr(cfg, "llm_int8_skip_modules", None)
        return [str(n) for n in names or ()]

    def prepare(self, ctx: ModelContext) -> PreparedModel:
        self.ensure_checked(ctx)
        from transformers import AutoModelForCausalLM

        from pplgate.models.llmc import check_load_report, conversion_error
        from pplgate.models.source import torch_dtype
        from pplgate.protocol.progress import library_bars_off

        dtype = ctx.dtype(self.dtype_param)
        t0 = time.perf_counter()
        float_model = ctx.load(dtype)  # the session's float model: its probe logits, and a GGUF's checkpoint
        base_logits = probe_logits(float_model)
        arch = architecture(float_model.config)
        with tempfile.TemporaryDirectory(prefix="pplgate-hfq-") as tmp:
            kw: dict[str, Any] = {"dtype": torch_dtype(dtype), "output_loading_info": True}
            kw["device_map"] = ctx.device_map or {"": str(ctx.torch_device)}
            path = ctx.source.path_or_id
            if ctx.source.gguf_file:
                path = write_float_checkpoint(float_model, Path(tmp))
            elif ctx.source.revision:
                kw["revision"] = ctx.source.revision
            del float_model
            t1 = time.perf_counter()
            unsupported = f"the {self.method_name} config or this {arch} model is not supported by this library version"

            def fix(exc: BaseException) -> str:
                return conversion_error(exc) + unsupported

            with library_boundary(self.kind, arch, self.method.dist, fix, "cannot quantize it"), library_bars_off():
                model, report = AutoModelForCausalLM.from_pretrained(path, quantization_config=self.config(), **kw)
            quantize_s = time.perf_counter() - t1
        check_load_report(report, ctx.source.describe(), self.kind, arch)
        model.eval()
        coverage = model_coverage(
            model, ignore=self._ignore(), ignore_by_substring=True, ignored_by="the config's modules_to_not_convert"
        )
        coverage.check(self.kind, arch, fix="list them in the config's modules_to_not_convert to keep them on purpose")
        runs = f"the {self.method_name}-quantized modules do not run this {arch} model: measure it with another kind"
        with library_boundary(self.kind, arch, self.method.dist, runs, "cannot run it"):
            logits = probe_logits(model)
        check_changed(base_logits, logits, self.kind, arch)
        info = {
            "dtype": dtype,
            "quant_method": self.method_name,
            self.method.dist: library_versions(self.method.dist)[self.method.dist],
            "quantize_time_s": quantize_s,
            "cache": NOT_CACHED,
            "coverage": coverage.text(),
        }
        return PreparedModel(model, "quantized", time.perf_counter() - t0, info)


def write_float_checkpoint(model: Any, folder: Path) -> str:
    """``model`` (a GGUF source's float model) as ``config.json`` + ``model.safetensors`` in ``folder`` (as the base
    cache writes it; tied tensors once), without a load-time ``quantization_config`` that transformers would read as
    the checkpoint's own."""
    from safetensors.torch import save_model

    model.config.save_pretrained(str(folder))
    save_model(model, str(folder / "model.safetensors"))
    cfg_path = folder / "config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    cfg.pop("quantization_config", None)
    cfg_path.write_text(json.dumps(cfg, indent=2), encoding="utf-8")
    return str(folder)
