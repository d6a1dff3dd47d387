"""``awq`` and ``awq-checkpoint``: real AutoAWQ quantization, measured through AutoAWQ's modules.

``awq`` loads the source model (fresh, compute dtype), wraps it in AutoAWQ's model class for its
architecture (``AWQ_CAUSAL_LM_MODEL_MAP[model_type](model, model_type, is_quantized=False, ...)``:
works for GGUF sources, which ``AutoAWQForCausalLM.from_pretrained`` cannot read), runs
``quantize(tokenizer, quant_config, calib_data=[texts], max_calib_samples, max_calib_seq_len)``
and measures the plain HF model inside (``awq_model.model``) whose decoder Linears are now
``WQLinear_GEMM``. With the cache on, the result is saved with ``save_quantized`` into the
:mod:`pplgate.models.quant_cache` and a later run loads it instead of quantizing.

``awq-checkpoint`` loads a pre-quantized AWQ checkpoint as deployed. Kernel paths, the checkpoint loader
and the CPU scale-search shim are in :mod:`pplgate.models.compat.autoawq`; ``info['kernel']`` records
which kernel ran.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pplgate.errors import CalibrationError, VariantError
from pplgate.models.base_check import base_record, finish_record, hit_problem, rebuild_on_mismatch
from pplgate.models.calibration import CalibrationSpec, VariantCalibration
from pplgate.models.compat.autoawq import (
    AWQ_VERSIONS,
    awq_kernel_info,
    awq_model_map,
    best_scale_snapshot_shim,
    check_kernel,
    import_autoawq,
    load_awq_checkpoint,
)
from pplgate.models.coverage import Coverage, check_changed, checkpoint_ignore, model_coverage, probe_logits
from pplgate.models.failures import DOCS, library_boundary
from pplgate.models.hashing import library_versions, source_fingerprint
from pplgate.models.layers import (
    architecture,
    group_size_fix,
    group_size_problems,
    load_config,
    strip_load_quantization,
)
from pplgate.models.quant_cache import QuantCache, cache_key, cache_key_parts
from pplgate.models.source import ModelSource, load_tokenizer
from pplgate.models.variant import DTYPE_PARAM, ModelContext, Param, PreparedModel, Variant
from pplgate.protocol.progress import library_bars_off

AWQ_SPEC = (
    Param("w_bit", int, 4),
    Param("q_group_size", int, 128),
    Param("zero_point", bool, True),
    Param("version", str, "gemm", AWQ_VERSIONS, casefold=True),
    DTYPE_PARAM,
    Param("apply_clip", bool, True),
    Param("duo_scaling", bool, True),
)
AWQ_PARAMS = (*(p.name for p in AWQ_SPEC), "calibration")  # calibration: CalibrationSpec.from_param
VERSIONS_KEYED = ("autoawq", "transformers", "torch", "accelerate")
# Version of pplgate's own AWQ quantization procedure; part of the cache key so that entries built by an
# older, broken procedure are never reused. 2: the _compute_best_scale CPU aliasing shim (see compat.autoawq).
AWQ_IMPL_VERSION = 2


def autoawq_layout_problem(config: Any) -> str | None:
    """Why AutoAWQ 0.2.9's model classes cannot handle this transformers-5 layout (None: they can). Its MoE
    classes walk one Linear per expert, transformers 5 fuses the experts into 3-D tensors (a raw traceback
    mid-quantization, or experts left unquantized); its Falcon class fails on the new layout's attention, and
    takes any old-layout Falcon whose head count is not Falcon-7B's 71 for the new layout."""
    cfg = getattr(config, "text_config", None) or config
    experts = [getattr(cfg, k, None) for k in ("num_local_experts", "num_experts", "n_routed_experts")]
    if any(isinstance(n, int) and n > 0 for n in experts):
        return "mixture-of-experts layers with fused 3-D expert tensors"
    if getattr(cfg, "model_type", None) == "falcon" and getattr(cfg, "new_decoder_architecture", False):
        return "Falcon's new decoder layout (ln_attn / ln_mlp)"
    if getattr(cfg, "model_type", None) == "falcon" and getattr(cfg, "num_attention_heads", 71) != 71:
        return (
            f"Falcon's old decoder layout with {cfg.num_attention_heads} attention heads: AutoAWQ's Falcon class "
            "reads the layout from the head count (71, Falcon-7B's, is the old layout; any other count the new one)"
        )
    return None


def autoawq_fix(arch: str) -> str:
    """What to do when AutoAWQ fails on ``arch``."""
    return f"measure this {arch} model with the kinds rtn, gptq or llmc-recipe (AWQModifier); {DOCS} lists what works"


def checked_coverage(model: Any, kind: str, base: Any = None) -> Coverage:
    """What the AutoAWQ model's decoder layers hold (``WQLinear`` modules), checked; with the float model's probe
    logits ``base``, the quantized model's must differ. A checkpoint's ``modules_to_not_convert`` are not eligible."""
    arch = architecture(model.config)
    ignore, _ = checkpoint_ignore(model.config)
    coverage = model_coverage(model, ignore=ignore, ignore_by_substring=True, ignored_by="modules_to_not_convert")
    coverage.check(kind, arch, fix="AutoAWQ left them as float Linears; " + autoawq_fix(arch))
    if base is not None:
        check_changed(base, probe_logits(model), kind, arch)
    return coverage


def load_checkpoint(kind: str, path: str, device: Any, dtype: str, revision: str | None = None) -> tuple[Any, str]:
    """:func:`load_awq_checkpoint`, a failure inside AutoAWQ or accelerate as one line naming the architecture."""
    try:
        arch = architecture(load_config(ModelSource(path, revision=revision)))
    except Exception:  # unreadable config: AutoAWQ's own error below says why
        arch = "unknown architecture"
    fix = f"the checkpoint does not load with AutoAWQ 0.2.9 on this stack; {DOCS} lists what works"
    with library_boundary(kind, arch, "autoawq", fix, "cannot load the AWQ checkpoint"):
        return load_awq_checkpoint(path, device, dtype, revision)


class AwqVariant(Variant):
    """Real AutoAWQ quantization of the source model.

    params: ``w_bit`` (4), ``q_group_size`` (128), ``zero_point`` (True), ``version`` (``gemm``),
    ``calibration`` (source string or ``{source|path, n_samples (128), seqlen (512), text_column}``),
    ``dtype`` (``auto``: fp16 on CUDA, fp32 on CPU — the dtype of the non-quantized parts; the
    WQLinear kernels compute in fp16 either way), ``apply_clip`` (True), ``duo_scaling`` (True).
    """

    kind = "awq"
    summary = "AutoAWQ 0.2.9 quantization (scale + clip search on calibration text), measured through its kernels"
    params_spec = AWQ_SPEC
    params_allowed = AWQ_PARAMS

    def __init__(self, params: Mapping[str, Any] | None = None) -> None:
        super().__init__(params)
        self.w_bit: int = self.values["w_bit"]
        self.group_size: int = self.values["q_group_size"]
        self.zero_point: bool = self.values["zero_point"]
        self.version: str = self.values["version"]
        self.apply_clip: bool = self.values["apply_clip"]
        self.duo_scaling: bool = self.values["duo_scaling"]
        if self.group_size != -1 and self.group_size <= 0:
            raise VariantError(f"awq: q_group_size must be positive or -1, got {self.group_size}")
        self.dtype_param: str = self.values["dtype"]
        try:
            self.calibration = CalibrationSpec.from_param(self.params.get("calibration"))
        except CalibrationError as exc:
            raise VariantError(f"awq: {exc}") from exc
        self.calibration_texts = VariantCalibration(self.calibration, self.kind)

    def quant_config(self) -> dict[str, Any]:
        return {
            "w_bit": self.w_bit,
            "q_group_size": self.group_size,
            "zero_point": self.zero_point,
            "version": self.version.upper(),
        }

    def fingerprint(self) -> dict[str, Any]:
        cal = self.calibration_texts.all()
        assert cal is not None  # awq always calibrates (CalibrationSpec.from_param fills in the default)
        return {
            "kind": self.kind,
            **self.quant_config(),
            "apply_clip": self.apply_clip,
            "duo_scaling": self.duo_scaling,
            "dtype": self.dtype_param,
            # The content hash identifies the calibration data; its path does not (it differs from
            # machine to machine, and a recorded path would read as drift on every other machine).
            "calibration": {
                "source_sha256": cal.sha256,
                "n_samples": self.calibration.n_samples,
                "seqlen": self.calibration.seqlen,
            },
            "autoawq": library_versions("autoawq")["autoawq"],
        }

    def check(self, ctx: ModelContext) -> None:
        check_kernel(self.version, self.w_bit, self.zero_point, ctx.torch_device)
        ctx.dtype(self.dtype_param)
        model_map = awq_model_map()
        try:
            config = ctx.config()
        except Exception as exc:
            raise VariantError(f"awq: cannot read the config of {ctx.source.describe()}: {exc}") from exc
        mt = getattr(config, "model_type", None)
        if mt not in model_map:
            raise VariantError(
                f"awq: AutoAWQ 0.2.9 does not support architecture {mt!r} ({ctx.source.describe()}); "
                f"{autoawq_fix(architecture(config))} (AutoAWQ's model_types: {', '.join(sorted(model_map))})"
            )
        layout = autoawq_layout_problem(config)
        if layout:
            raise VariantError(
                f"awq: AutoAWQ 0.2.9 lists {mt!r} but cannot quantize it as transformers 5 builds it ({layout}); "
                + autoawq_fix(architecture(config))
            )
        problems = group_size_problems(config, self.group_size)
        if problems:
            raise VariantError(
                f"awq: q_group_size {self.group_size} does not fit {ctx.source.describe()}: "
                + "; ".join(problems)
                + f"; {group_size_fix(config)}"
            )
        self.calibration_texts.all()

    def cache_key_parts(self, ctx: ModelContext, calibration_sha256: str) -> dict[str, Any]:
        variant = {
            "kind": self.kind,
            **self.quant_config(),
            "apply_clip": self.apply_clip,
            "duo_scaling": self.duo_scaling,
            "quant_dtype": ctx.dtype(self.dtype_param),
            "calibration_seqlen": self.calibration.seqlen,
            "pplgate_awq_impl": AWQ_IMPL_VERSION,
        }
        return cache_key_parts(ctx.source, variant, calibration_sha256, library_versions(*VERSIONS_KEYED))

    def _quantize(self, ctx: ModelContext, dtype: str, texts: list[str], tokenizer) -> tuple[Any, Any, dict]:
        """``(AutoAWQ wrapper, the float model's probe logits, its base_check record)``."""
        model = ctx.load(dtype, fresh=True)
        strip_load_quantization(model)
        base, record = probe_logits(model), base_record(model)
        mt = model.config.model_type
        cls = awq_model_map()[mt]
        from awq.models._config import AwqConfig

        arch = architecture(model.config)
        with library_boundary(self.kind, arch, "autoawq", autoawq_fix(arch)):
            wrapper = cls(model, mt, is_quantized=False, config=model.config, quant_config=AwqConfig(), processor=None)
            with best_scale_snapshot_shim(), library_bars_off():  # AutoAWQ's "AWQ"/"Packing" bars: tty only
                wrapper.quantize(
                    tokenizer,
                    quant_config=self.quant_config(),
                    calib_data=texts,
                    max_calib_samples=len(texts),
                    max_calib_seq_len=self.calibration.seqlen,
                    apply_clip=self.apply_clip,
                    duo_scaling=self.duo_scaling,
                )
        wrapper.model.to(ctx.torch_device)
        return wrapper, base, finish_record(record, wrapper.model)

    def _in_memory(self, ctx: ModelContext, dtype: str, texts: list[str], tokenizer, info: dict, t0: float):
        t1 = time.perf_counter()
        wrapper, base, _ = self._quantize(ctx, dtype, texts, tokenizer)
        info.update(quantize_time_s=time.perf_counter() - t1, **awq_kernel_info(wrapper.model))
        info["coverage"] = checked_coverage(wrapper.model, self.kind, base).text()
        return PreparedModel(wrapper.model, "quantized", time.perf_counter() - t0, info)

    def prepare(self, ctx: ModelContext) -> PreparedModel:
        self.ensure_checked(ctx)
        t0 = time.perf_counter()
        dtype = ctx.dtype(self.dtype_param)
        tokenizer = ctx.tokenizer if ctx.tokenizer is not None else load_tokenizer(ctx.source)
        cal = self.calibration_texts.selected(tokenizer)
        assert cal is not None
        parts = self.cache_key_parts(ctx, cal.sha256)
        key = cache_key(parts)
        info: dict[str, Any] = {
            "dtype": dtype,
            "cache_key": key,
            "calibration_source": cal.source,
            "calibration_sha256": cal.sha256,
            "calibration_n_texts": len(cal),
        }
        cache = QuantCache(ctx.cache_dir, ctx.cache_mode)
        if not cache.enabled:
            return self._in_memory(ctx, dtype, list(cal.texts), tokenizer, {**info, "cache": "off"}, t0)

        built: dict[str, Any] = {}

        def build(tmp: Path) -> dict[str, Any]:
            t1 = time.perf_counter()
            wrapper, base, record = self._quantize(ctx, dtype, list(cal.texts), tokenizer)
            built["quantize_time_s"] = time.perf_counter() - t1
            built["kernel"] = awq_kernel_info(wrapper.model)
            built["coverage"] = checked_coverage(wrapper.model, self.kind, base).text()  # raising: no cache entry
            built["wrapper"], built["save_time_s"] = wrapper, None
            t2 = time.perf_counter()
            wrapper.save_quantized(str(tmp / "model"))
            tokenizer.save_pretrained(str(tmp / "model"))
            built["save_time_s"] = time.perf_counter() - t2
            return {"quantize_time_s": built["quantize_time_s"], "key_parts": parts, "base": record}

        got = cache.get_or_build(key, build, {"source": ctx.source.describe(), "variant": self.fingerprint()})
        if got is None:  # not written (warned): the model quantized in memory, else one quantized without the cache
            info["cache"] = "not written"
            if "wrapper" not in built:
                return self._in_memory(ctx, dtype, list(cal.texts), tokenizer, info, t0)
        entry, hit = got if got is not None else (None, False)
        if entry is not None:
            info["cache_entry"] = str(entry.path)
        if hit:
            t1 = time.perf_counter()
            model, how = load_checkpoint(self.kind, str(entry.path / "model"), ctx.torch_device, dtype)
            if rebuild_on_mismatch(
                cache, entry, hit_problem(model, entry.meta.get("base"), ctx.config(), ctx.held(dtype))
            ):
                return self.prepare(ctx)
            info.update(
                load_time_s=time.perf_counter() - t1,
                load_path=how,
                quantize_time_s_when_built=entry.meta.get("quantize_time_s"),
                **awq_kernel_info(model),
            )
            info["coverage"] = checked_coverage(model, self.kind).text()
            return PreparedModel(model, "cache", time.perf_counter() - t0, info)
        wrapper = built.get("wrapper")
        if wrapper is None and entry is not None:  # another worker built it while we waited on the lock's rename race
            model, how = load_checkpoint(self.kind, str(entry.path / "model"), ctx.torch_device, dtype)
            info.update(load_path=how, **awq_kernel_info(model))
            info["coverage"] = checked_coverage(model, self.kind).text()
            return PreparedModel(model, "cache", time.perf_counter() - t0, info)
        info.update(
            quantize_time_s=built["quantize_time_s"],
            save_time_s=built["save_time_s"],
            **built["kernel"],
            coverage=built["coverage"],
        )
        return PreparedModel(wrapper.model, "quantized", time.perf_counter() - t0, info)


class AwqCheckpointVariant(Variant):
    """A pre-quantized AWQ checkpoint loaded as deployed. params: ``checkpoint`` (directory or hub
    id; default: the baseline's model source), ``revision``, ``dtype`` (``auto``)."""

    kind = "awq-checkpoint"
    summary = "a pre-quantized AutoAWQ checkpoint, loaded and run through AutoAWQ's kernels"
    params_spec = (Param("checkpoint", str), Param("revision", str), DTYPE_PARAM)

    def __init__(self, params: Mapping[str, Any] | None = None) -> None:
        super().__init__(params)
        self.dtype_param: str = self.values["dtype"]
        self.checkpoint: str | None = self.values["checkpoint"]
        self.revision: str | None = self.values["revision"]

    def _target(self, ctx: ModelContext | None) -> tuple[str, str | None]:
        if self.checkpoint:
            return str(Path(self.checkpoint).expanduser()) if Path(
                self.checkpoint
            ).expanduser().exists() else self.checkpoint, self.revision
        if ctx is None:
            raise VariantError("awq-checkpoint: no checkpoint param")
        return ctx.source.path_or_id, self.revision or ctx.source.revision

    def fingerprint(self) -> dict[str, Any]:
        fp: dict[str, Any] = {"kind": self.kind, "dtype": self.dtype_param}
        if self.checkpoint:
            fp["checkpoint"] = source_fingerprint(ModelSource(*self._target(None)[:1], revision=self.revision))
        fp["autoawq"] = library_versions("autoawq")["autoawq"]
        return fp

    def check(self, ctx: ModelContext) -> None:
        import_autoawq()
        ctx.dtype(self.dtype_param)
        path, revision = self._target(ctx)
        try:
            config = load_config(ModelSource(path, revision=revision))
        except Exception as exc:
            raise VariantError(f"awq-checkpoint: cannot read the config of {path!r}: {exc}") from exc
        qc = getattr(config, "quantization_config", None)
        qc = qc if isinstance(qc, Mapping) else (qc.to_dict() if hasattr(qc, "to_dict") else {})
        if str(qc.get("quant_method", "")).lower() != "awq":
            raise VariantError(f"awq-checkpoint: {path!r} is not an AWQ checkpoint (quantization_config: {qc or None})")
        if config.model_type not in awq_model_map():
            raise VariantError(f"awq-checkpoint: AutoAWQ 0.2.9 does not support architecture {config.model_type!r}")
        where = f"awq-checkpoint {path!r}: config.json quantization_config"
        bits = Param("bits", int, 4).read({"bits": qc.get("bits", qc.get("w_bit", 4))}, where)
        zero_point = Param("zero_point", bool, True).read(qc, where)
        version = Param("version", str, "gemm").read(qc, where).lower()
        check_kernel(version, bits, zero_point, ctx.torch_device)

    def prepare(self, ctx: ModelContext) -> PreparedModel:
        self.ensure_checked(ctx)
        dtype = ctx.dtype(self.dtype_param)
        path, revision = self._target(ctx)
        t0 = time.perf_counter()
        model, how = load_checkpoint(self.kind, path, ctx.torch_device, dtype, revision)
        info = {"dtype": dtype, "load_path": how, "checkpoint": path, **awq_kernel_info(model)}
        info["coverage"] = checked_coverage(model, self.kind).text()
        return PreparedModel(model, "loaded", time.perf_counter() - t0, info)
