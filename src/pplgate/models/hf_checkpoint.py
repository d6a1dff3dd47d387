"""``hf-checkpoint``: a quantized checkpoint with a ``quantization_config``, loaded with transformers as deployed.

compressed-tensors first (llm-compressor's output: pack-quantized, int-quantized, ...); other formats
(AWQ, GPTQ, bitsandbytes, ...) where the installed libraries load them: transformers' own error is
passed on in one line with the format named. What the loaded modules hold quantized is the ``coverage``
(:mod:`pplgate.models.coverage`): a checkpoint whose decoder weights hold nothing quantized is an error.
AutoAWQ checkpoints through AutoAWQ's kernels stay kind ``awq-checkpoint``. The fingerprint holds the
checkpoint's content hash (a local directory) or its hub id and revision, never a local path.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pplgate.errors import VariantError
from pplgate.models.hashing import library_versions, source_fingerprint
from pplgate.models.layers import load_config
from pplgate.models.source import ModelSource
from pplgate.models.variant import DTYPE_PARAM, ModelContext, Param, PreparedModel, Variant

FORMAT_LIBRARIES = {"compressed-tensors": "compressed-tensors", "awq": "autoawq", "gptq": "gptqmodel"}


def quant_method(config: Any) -> str | None:
    qc = getattr(config, "quantization_config", None)
    qc = qc if isinstance(qc, Mapping) else (qc.to_dict() if hasattr(qc, "to_dict") else None)
    if not qc:
        return None
    method = qc.get("quant_method")
    return str(getattr(method, "value", method)).lower() if method is not None else "unknown"


class HfCheckpointVariant(Variant):
    """A quantized checkpoint as deployed. params: ``checkpoint`` (directory or hub id; default: the
    baseline's model source), ``revision``, ``dtype`` (``auto``)."""

    kind = "hf-checkpoint"
    summary = "a quantized HF checkpoint (compressed-tensors first) loaded with transformers, as deployed"
    params_spec = (Param("checkpoint", str), Param("revision", str), DTYPE_PARAM)

    def __init__(self, params: Mapping[str, Any] | None = None) -> None:
        super().__init__(params)
        self.dtype_param: str = self.values["dtype"]
        self.checkpoint: str | None = self.values["checkpoint"]
        self.revision: str | None = self.values["revision"]

    def _source(self, ctx: ModelContext | None) -> ModelSource:
        if self.checkpoint:
            p = Path(self.checkpoint).expanduser()
            return ModelSource(str(p) if p.exists() else self.checkpoint, revision=self.revision)
        if ctx is None:
            raise VariantError("hf-checkpoint: no checkpoint param and no model source")
        if ctx.source.gguf_file:
            raise VariantError(
                f"hf-checkpoint: the model source {ctx.source.describe()} is a GGUF file; "
                "name the quantized checkpoint with params.checkpoint"
            )
        return ModelSource(ctx.source.path_or_id, revision=self.revision or ctx.source.revision)

    def fingerprint(self) -> dict[str, Any]:
        fp: dict[str, Any] = {"kind": self.kind, "dtype": self.dtype_param}
        if self.checkpoint:
            fp["checkpoint"] = source_fingerprint(self._source(None))
        fp["libraries"] = library_versions("transformers", "compressed-tensors")
        return fp

    def check(self, ctx: ModelContext) -> None:
        ctx.dtype(self.dtype_param)
        src = self._source(ctx)
        try:
            config = load_config(src)
        except Exception as exc:
            raise VariantError(f"hf-checkpoint: cannot read the config of {src.describe()}: {exc}") from exc
        method = quant_method(config)
        if method is None:
            raise VariantError(
                f"hf-checkpoint: {src.describe()} has no quantization_config in its config.json: it is not a "
                "quantized checkpoint (measure it with kind fp16/bf16/fp32, or quantize it with gptq/llmc-recipe)"
            )
        lib = FORMAT_LIBRARIES.get(method)
        if lib is not None and library_versions(lib)[lib] is None:
            raise VariantError(
                f"hf-checkpoint: {src.describe()} is a {method} checkpoint and {lib} is not "
                f"installed: pip install {lib}"
                + (" (or pplgate[llmcompressor])" if method == "compressed-tensors" else "")
            )

    def prepare(self, ctx: ModelContext) -> PreparedModel:
        self.ensure_checked(ctx)
        from pplgate.models.llmc import load_compressed, loaded_coverage

        dtype = ctx.dtype(self.dtype_param)
        src = self._source(ctx)
        method = quant_method(load_config(src))
        t0 = time.perf_counter()
        fix = (
            f"the {method} checkpoint {src.describe()} does not load with this transformers: load it with the "
            "library versions it was made with, or re-export it with these"
        )
        model = load_compressed(
            src.path_or_id, ctx, dtype, src.revision, compressed_tensors=method == "compressed-tensors", fix=fix
        )
        coverage = loaded_coverage(model, self.kind, src)  # what the loaded modules hold quantized; nothing: an error
        info = {"dtype": dtype, "checkpoint": src.describe(), "quant_method": method, "coverage": coverage.text()}
        return PreparedModel(model, "loaded", time.perf_counter() - t0, info)
