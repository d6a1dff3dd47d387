"""``hqq``: Half-Quadratic Quantization through HQQ's own API (transformers 5.17's ``HqqConfig`` route raises
``NotImplementedError``), measured as HQQ runs it.

The float model is loaded fresh in the compute dtype, then ``AutoHQQHFModel.quantize_model(model,
quant_config=BaseQuantizeConfig(nbits, group_size, axis=axis), compute_dtype, device)`` replaces every decoder Linear
by HQQ's ``HQQLinear`` (packed ``W_q``, scales and zeros; HQQ's optimizer fits the zero points); its forward runs in
HQQ's ``backend`` (``pytorch``: de-quantize and matmul, HQQ's default; ``pytorch_compile``: the same through
``torch.compile``). Fused 3-D expert tensors are not Linears: HQQ leaves them in full precision, so a mixture-of-
experts model is refused by the coverage check. The fingerprint holds HQQ's version and the resolved
``BaseQuantizeConfig``. Not cached: HQQ quantizes a 135M model in seconds, and its serialization is its own format.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Mapping
from typing import Any

from pplgate.errors import VariantError
from pplgate.models.coverage import check_changed, model_coverage, probe_logits, weight_digests
from pplgate.models.failures import library_boundary
from pplgate.models.hashing import library_versions
from pplgate.models.layers import architecture, group_size_problems, strip_load_quantization
from pplgate.models.variant import DTYPE_PARAM, ModelContext, Param, PreparedModel, Variant

BACKENDS = {"pytorch": "PYTORCH", "pytorch_compile": "PYTORCH_COMPILE"}
HQQ_SPEC = (
    Param("nbits", int, 4),
    Param("group_size", int, 64),
    Param("axis", int, 1),
    Param("backend", str, "pytorch", tuple(BACKENDS), casefold=True),
    DTYPE_PARAM,
)
NBITS = (1, 2, 3, 4, 8)
NOT_CACHED = "not cached: HQQ quantizes in seconds and serializes in its own format"


class HqqVariant(Variant):
    """HQQ weight-only quantization. params: ``nbits`` (4), ``group_size`` (64), ``axis`` (1), ``backend``
    (``pytorch``), ``dtype`` (``auto``: the compute dtype)."""

    kind = "hqq"
    summary = f"HQQ through its own API (AutoHQQHFModel), its HQQLinear modules measured ({NOT_CACHED})"
    params_spec = HQQ_SPEC

    def __init__(self, params: Mapping[str, Any] | None = None) -> None:
        super().__init__(params)
        v = self.values
        self.nbits: int = v["nbits"]
        self.group_size: int = v["group_size"]
        self.axis: int = v["axis"]
        self.backend: str = v["backend"]
        self.dtype_param: str = v["dtype"]
        if self.nbits not in NBITS:
            raise VariantError(f"hqq: param nbits must be one of {', '.join(map(str, NBITS))}, got {self.nbits}")
        if self.group_size <= 0 or self.group_size % 8:
            raise VariantError(f"hqq: param group_size must be a positive multiple of 8, got {self.group_size}")
        if self.axis not in (0, 1):
            raise VariantError(f"hqq: param axis must be 0 or 1, got {self.axis}")

    def quant_config(self) -> dict[str, Any]:
        """HQQ's ``BaseQuantizeConfig`` for the params (HQQ must be installed)."""
        from hqq.core.quantize import BaseQuantizeConfig

        return BaseQuantizeConfig(nbits=self.nbits, group_size=self.group_size, axis=self.axis)

    def fingerprint(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "quant_config": self.quant_config(),
            "backend": self.backend,
            "dtype": self.dtype_param,
            "hqq": library_versions("hqq")["hqq"],
        }

    def check(self, ctx: ModelContext) -> None:
        ctx.dtype(self.dtype_param)
        if importlib.util.find_spec("hqq") is None:
            raise VariantError("hqq: HQQ is not installed: pip install 'pplgate[hqq]'")
        try:
            config = ctx.config()
        except Exception:  # unreadable config: prepare() checks the real modules
            return
        problems = group_size_problems(config, self.group_size) if self.axis == 1 else []
        if problems:
            raise VariantError(
                f"hqq group_size {self.group_size} does not fit {ctx.source.describe()}: " + "; ".join(problems)
            )

    def prepare(self, ctx: ModelContext) -> PreparedModel:
        self.ensure_checked(ctx)
        import torch
        from hqq.core.quantize import HQQBackend, HQQLinear
        from hqq.models.hf.base import AutoHQQHFModel

        from pplgate.models.source import torch_dtype
        from pplgate.protocol.progress import library_bars_off

        dtype = ctx.dtype(self.dtype_param)
        t0 = time.perf_counter()
        model = ctx.load(dtype, fresh=True)
        strip_load_quantization(model)
        arch = architecture(model.config)
        if not isinstance(getattr(getattr(model, "model", None), "layers", None), torch.nn.ModuleList):
            raise VariantError(
                f"hqq: HQQ {library_versions('hqq')['hqq']}'s AutoHQQHFModel finds the decoder blocks at model.layers "
                f"only, which this {arch} model ({type(model).__name__}) does not have: measure it with the kinds "
                "rtn, gptq or transformers"
            )
        base, base_logits = weight_digests(model), probe_logits(model)
        t1 = time.perf_counter()
        fix = "HQQ cannot quantize this architecture's layout: measure it with the kinds rtn, gptq or transformers"
        with library_boundary(self.kind, arch, "hqq", fix, "cannot quantize it"), library_bars_off():
            HQQLinear.set_backend(getattr(HQQBackend, BACKENDS[self.backend]))
            AutoHQQHFModel.quantize_model(
                model, quant_config=self.quant_config(), compute_dtype=torch_dtype(dtype), device=str(ctx.torch_device)
            )
        quantize_s = time.perf_counter() - t1
        model.eval()
        coverage = model_coverage(model, base=base)
        coverage.check(self.kind, arch, fix="HQQ quantizes Linears only (fused experts are 3-D tensors)")
        with torch.no_grad():
            check_changed(base_logits, probe_logits(model), self.kind, arch)
        info = {
            "dtype": dtype,
            "hqq": library_versions("hqq")["hqq"],
            "backend": self.backend,
            "quantize_time_s": quantize_s,
            "cache": NOT_CACHED,
            "coverage": coverage.text(),
        }
        return PreparedModel(model, "quantized", time.perf_counter() - t0, info)
