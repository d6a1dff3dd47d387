"""``fp16``, ``bf16`` and ``fp32``: the model as loaded, in one floating-point dtype."""

from __future__ import annotations

import time
from typing import Any, ClassVar

from pplgate.models.variant import ModelContext, PreparedModel, Variant


class FloatVariant(Variant):
    """The model as loaded, in one floating-point dtype (no params)."""

    dtype: ClassVar[str]
    params_allowed = ()

    def fingerprint(self) -> dict[str, Any]:
        return {"kind": self.kind, "dtype": self.dtype}

    def prepare(self, ctx: ModelContext) -> PreparedModel:
        self.ensure_checked(ctx)
        t0 = time.perf_counter()
        model = ctx.load(self.dtype)
        return PreparedModel(model=model, origin="loaded", prepare_time_s=time.perf_counter() - t0)


class Fp16Variant(FloatVariant):
    kind = "fp16"
    summary = "the model as loaded, in float16"
    dtype = "fp16"


class Bf16Variant(FloatVariant):
    kind = "bf16"
    summary = "the model as loaded, in bfloat16"
    dtype = "bf16"


class Fp32Variant(FloatVariant):
    kind = "fp32"
    summary = "the model as loaded, in float32"
    dtype = "fp32"
