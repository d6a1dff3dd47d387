"""``awq`` and ``awq-checkpoint``: real AutoAWQ quantization, measured through AutoAWQ's modules.

``awq`` loads the source model (fresh, compute dtype), wraps it in AutoAWQ's model class for its
architecture (``AWQ_CAUSAL_LM_MODEL_MAP[model_type](model, model_type, is_quantized=False, ...)``:
works for GGUF sources, which ``AutoAWQForCausalLM.from_pretrained`` cannot read), runs
``quantize(tokenizer, quant_config, calib_data=[texts], max_calib_samples, max_calib_seq_len)``
and measures the plain HF model inside (``awq_model.model``) whose decoder Linears are now
``WQLinear_GEMM``. With the cache on, the result is saved with ``save_quantized`` into the
:mod:`pplgate.qcache` and a later run loads it instead of quantizing.

Kernel path (``WQLinear_GEMM.forward``, AutoAWQ 0.2.9): ``awq_ext`` (CUDA extension) if installed,
else Triton (``awq_gemm_triton`` / ``awq_dequantize_triton`` + fp16 matmul for >= 1024 rows) when
``triton`` imports, else the naive path (``dequantize_gemm`` in torch + fp16 ``torch.matmul``).
Inputs are cast to fp16 and the output back. On CPU (no awq_ext, no triton) that naive path is
the one used. ``info['kernel']`` records which.

Loading a checkpoint: on CUDA, ``AutoAWQForCausalLM.from_quantized(path, fuse_layers=False,
device_map={"": device}, torch_dtype=...)`` as users deploy it (fused layers are an inference
optimisation for generation with a KV cache; the protocol runs without cache). On CPU,
``from_quantized`` insists on the IPEX kernel (``intel_extension_for_pytorch``); without IPEX pplgate
performs the same steps as ``from_quantized`` (``_load_config``, ``_load_quantized_modules`` with
``use_ipex=False``, ``load_checkpoint_and_dispatch``), so the same ``WQLinear_GEMM`` modules run.

Quantizing on CPU needs a workaround for an AutoAWQ 0.2.9 aliasing bug in the scale search (its weight
snapshot is ``v.cpu()``, an alias on CPU, and the search scales the weights in place):
``_best_scale_snapshot_shim`` is active around ``quantize``. Without it every scaled Linear computes
``W * s0`` instead of ``W``.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from pplgate.calibration import CalibrationError, CalibrationSpec, load_calibration, select_calibration
from pplgate.models import load_tokenizer, resolve_device, torch_dtype
from pplgate.progress import library_bars_off
from pplgate.qcache import QuantCache, cache_key, cache_key_parts, library_versions, source_fingerprint
from pplgate.quant_utils import group_size_problems, load_config, resolve_dtype, strip_load_quantization
from pplgate.variants import ModelContext, PreparedModel, Variant, VariantError, register

AWQ_INSTALL = "pip install --no-deps autoawq==0.2.9"
AWQ_BANNER = "AutoAWQ is officially deprecated"  # in the DeprecationWarning that `import awq` issues
AWQ_VERSIONS = ("gemm", "gemv", "gemv_fast", "marlin")
AWQ_PARAMS = ("w_bit", "q_group_size", "zero_point", "version", "calibration", "dtype", "apply_clip", "duo_scaling")
VERSIONS_KEYED = ("autoawq", "transformers", "torch", "accelerate")
# Version of pplgate's own AWQ quantization procedure; part of the cache key so that entries built by an
# older, broken procedure are never reused. 2: the _compute_best_scale CPU aliasing shim (see below).
AWQ_IMPL_VERSION = 2


def import_autoawq():
    """Import AutoAWQ without its end-of-maintenance banner (other warnings pass); VariantError if missing."""
    if importlib.util.find_spec("awq") is None:
        raise VariantError(f"the awq variants need AutoAWQ: {AWQ_INSTALL}")
    import warnings

    # AutoAWQ's __init__ turns DeprecationWarnings on for everyone (warnings.simplefilter("default", ...))
    # and then warns its end-of-maintenance banner: pplgate pins 0.2.9 knowingly, so the banner only
    # alarms. Record what the import warns, drop the banner and hand everything else back to the
    # caller's own filters (AutoAWQ's global filter change ends with the block).
    try:
        with warnings.catch_warnings(record=True) as caught:
            module = importlib.import_module("awq")
    except Exception as exc:
        raise VariantError(f"AutoAWQ is installed but fails to import ({type(exc).__name__}: {exc})") from exc
    for w in caught:
        if not (issubclass(w.category, DeprecationWarning) and AWQ_BANNER in str(w.message)):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return module


def awq_model_map() -> dict[str, Any]:
    import_autoawq()
    from awq.models.auto import AWQ_CAUSAL_LM_MODEL_MAP

    return AWQ_CAUSAL_LM_MODEL_MAP


def gemm_kernel_path() -> str:
    """Which implementation ``WQLinear_GEMM.forward`` will use in this environment."""
    import_autoawq()
    from awq.modules.linear import gemm

    if gemm.awq_ext is not None:
        return "awq_ext (CUDA extension)"
    if gemm.TRITON_AVAILABLE:
        return "triton (awq_gemm_triton / awq_dequantize_triton)"
    return "naive (awq.utils.packing_utils.dequantize_gemm + fp16 torch.matmul)"


def _check_kernel(version: str, w_bit: int, zero_point: bool, device: str) -> None:
    if version not in AWQ_VERSIONS:
        raise VariantError(f"awq: version must be one of {list(AWQ_VERSIONS)}, got {version!r}")
    if w_bit != 4:
        raise VariantError(f"awq: w_bit {w_bit} is not supported; AutoAWQ's {version.upper()} kernels are 4-bit only")
    if not zero_point and version != "marlin":
        raise VariantError(
            f"awq: zero_point=False is not supported by AutoAWQ's {version.upper()} modules (they pack zero points); "
            "use zero_point: true (or the rtn variant for symmetric quantization)"
        )
    dev = resolve_device(device)
    if version == "gemm":
        return
    if dev.type != "cuda":
        raise VariantError(
            f"awq: version {version!r} needs a CUDA GPU kernel (AutoAWQ has no CPU path for it); "
            "on CPU use version: gemm"
        )
    needed = "marlin" if version == "marlin" else "awq_ext"
    if importlib.util.find_spec(needed) is None:
        raise VariantError(f"awq: version {version!r} needs the {needed!r} kernel package, which is not installed")


@contextlib.contextmanager
def _best_scale_snapshot_shim():
    """Work around an AutoAWQ 0.2.9 bug that corrupts the weights when the scale search runs on CPU.

    ``AwqQuantizer._compute_best_scale`` snapshots the block it inspects with
    ``org_sd = {k: v.cpu() for k, v in module2inspect.state_dict().items()}`` and restores it with
    ``load_state_dict(org_sd)`` after each grid point. It evaluates a grid point by scaling the weights
    *in place* (``fc.weight.mul_(scales)``). On a GPU ``.cpu()`` is a copy, so the snapshot is safe; on
    CPU ``.cpu()`` returns the very same tensor, so the first grid point's in-place ``mul_`` also
    rewrites the snapshot. From then on every grid point is scored against weights already multiplied
    by the first grid point's scales, and the "restored" weights keep that factor: ``apply_scale`` then
    multiplies them by the chosen scales a second time while the preceding norm is divided only once.
    The quantized model computes ``W * s0`` instead of ``W`` in every scaled Linear (SmolLM2-135M: PPL
    ~365,000 instead of ~30).

    The shim registers, for the duration of each ``_compute_best_scale`` call, a state_dict post-hook on
    the inspected module that turns the snapshot's tensors into detached CPU *copies* (what ``.cpu()``
    yields for CUDA tensors, so the GPU behaviour is unchanged; AutoAWQ's ``.cpu()`` is then a no-op).
    It is installed only around pplgate's ``quantize`` call and removed afterwards.
    """
    from awq.quantize.quantizer import AwqQuantizer

    original = AwqQuantizer._compute_best_scale

    def _copy_to_cpu(module, state_dict, prefix, local_metadata):
        for k, v in state_dict.items():
            state_dict[k] = v.detach().to("cpu", copy=True)

    def _compute_best_scale(self, x, w_mean, x_mean, module2inspect, *args, **kwargs):
        handle = module2inspect.register_state_dict_post_hook(_copy_to_cpu)
        try:
            return original(self, x, w_mean, x_mean, module2inspect, *args, **kwargs)
        finally:
            handle.remove()

    AwqQuantizer._compute_best_scale = _compute_best_scale
    try:
        yield
    finally:
        AwqQuantizer._compute_best_scale = original


def _fix_wq_dtypes(model: torch.nn.Module) -> None:
    """WQLinear_GEMM keeps fp16 scales/bias whatever the model dtype (its kernel computes in fp16)."""
    from awq.modules.linear.gemm import WQLinear_GEMM

    for mod in model.modules():
        if isinstance(mod, WQLinear_GEMM):
            mod.scales = mod.scales.to(torch.float16)
            if mod.bias is not None:
                mod.bias = mod.bias.to(torch.float16)


def load_awq_checkpoint(path: str, device: str = "auto", dtype: str = "fp16", revision: str | None = None):
    """Load a saved AWQ checkpoint (directory or hub id) as an HF model with WQLinear modules.

    Returns ``(model, how)``; ``how`` says which loading path ran (see the module doc).
    """
    import_autoawq()
    from awq import AutoAWQForCausalLM

    dev = resolve_device(device)
    tdtype = torch_dtype(dtype)
    if dev.type == "cuda":
        kw: dict[str, Any] = {"download_kwargs": {"revision": revision}} if revision else {}
        wrapper = AutoAWQForCausalLM.from_quantized(
            path, fuse_layers=False, device_map={"": str(dev)}, torch_dtype=tdtype, **kw
        )
        model = wrapper.model
        how = "AutoAWQForCausalLM.from_quantized(fuse_layers=False)"
    else:
        import transformers
        from accelerate.big_modeling import init_empty_weights, load_checkpoint_and_dispatch
        from awq.models.auto import check_and_get_model_type
        from awq.models.base import TRANSFORMERS_AUTO_MAPPING_DICT

        model_type = check_and_get_model_type(path, True)
        cls = awq_model_map()[model_type]
        weights, config, qcfg = cls._load_config(
            cls, path, "", True, True, max_seq_len=None, download_kwargs={"revision": revision} if revision else None
        )
        target = getattr(transformers, TRANSFORMERS_AUTO_MAPPING_DICT[config.model_type])
        with init_empty_weights():
            model = target.from_config(config=config, dtype=tdtype)
        cls._load_quantized_modules(
            cls, model, qcfg, qcfg.version, use_exllama=False, use_exllama_v2=False, use_ipex=False
        )
        model.tie_weights()
        load_checkpoint_and_dispatch(
            model, checkpoint=weights, device_map={"": "cpu"}, no_split_module_classes=[cls.layer_type], dtype=tdtype
        )
        how = "from_quantized steps without IPEX (CPU): _load_quantized_modules(use_ipex=False)"
    _fix_wq_dtypes(model)
    model.eval()
    return model, how


def _awq_kernel_info(model: torch.nn.Module) -> dict[str, Any]:
    names = sorted({type(m).__name__ for m in model.modules() if type(m).__name__.startswith("WQLinear")})
    n = sum(1 for m in model.modules() if type(m).__name__.startswith("WQLinear"))
    return {"quant_modules": names, "n_quant_linears": n, "kernel": gemm_kernel_path()}


class _AwqBase(Variant):
    def _common_params(self) -> None:
        self.dtype_param = self.params.get("dtype", "auto")
        if self.dtype_param not in ("auto", "fp16", "bf16", "fp32"):
            raise VariantError(f"{self.kind}: dtype must be auto, fp16, bf16 or fp32; got {self.dtype_param!r}")


@register
class AwqVariant(_AwqBase):
    """Real AutoAWQ quantization of the source model.

    params: ``w_bit`` (4), ``q_group_size`` (128), ``zero_point`` (True), ``version`` (``gemm``),
    ``calibration`` (source string or ``{source|path, n_samples (128), seqlen (512), text_column}``),
    ``dtype`` (``auto``: fp16 on CUDA, fp32 on CPU — the dtype of the non-quantized parts; the
    WQLinear kernels compute in fp16 either way), ``apply_clip`` (True), ``duo_scaling`` (True).
    """

    kind = "awq"
    params_allowed = AWQ_PARAMS

    def __init__(self, params: Mapping[str, Any] | None = None) -> None:
        super().__init__(params)
        self.w_bit = self.params.get("w_bit", 4)
        self.group_size = self.params.get("q_group_size", 128)
        self.zero_point = bool(self.params.get("zero_point", True))
        self.version = str(self.params.get("version", "gemm")).lower()
        self.apply_clip = bool(self.params.get("apply_clip", True))
        self.duo_scaling = bool(self.params.get("duo_scaling", True))
        for key in ("w_bit", "q_group_size"):
            v = getattr(self, "w_bit" if key == "w_bit" else "group_size")
            if isinstance(v, bool) or not isinstance(v, int):
                raise VariantError(f"awq: {key} must be an integer, got {v!r}")
        if self.group_size != -1 and self.group_size <= 0:
            raise VariantError(f"awq: q_group_size must be positive or -1, got {self.group_size}")
        self._common_params()
        try:
            self.calibration = CalibrationSpec.from_param(self.params.get("calibration"))
        except CalibrationError as exc:
            raise VariantError(f"awq: {exc}") from exc
        self._cal_all = None

    def quant_config(self) -> dict[str, Any]:
        return {
            "w_bit": self.w_bit,
            "q_group_size": self.group_size,
            "zero_point": self.zero_point,
            "version": self.version.upper(),
        }

    def _calibration_all(self):
        if self._cal_all is None:
            try:
                self._cal_all = load_calibration(self.calibration.source, text_column=self.calibration.text_column)
            except CalibrationError as exc:
                raise VariantError(f"awq calibration: {exc}") from exc
        return self._cal_all

    def fingerprint(self) -> dict[str, Any]:
        cal = self._calibration_all()
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
        _check_kernel(self.version, self.w_bit, self.zero_point, ctx.device)
        resolve_dtype(self.dtype_param, ctx.device)
        model_map = awq_model_map()
        try:
            config = load_config(ctx.source)
        except Exception as exc:
            raise VariantError(f"awq: cannot read the config of {ctx.source.describe()}: {exc}") from exc
        mt = getattr(config, "model_type", None)
        if mt not in model_map:
            raise VariantError(
                f"awq: AutoAWQ 0.2.9 does not support architecture {mt!r} ({ctx.source.describe()}); "
                f"supported model_types: {', '.join(sorted(model_map))}"
            )
        problems = group_size_problems(config, self.group_size)
        if problems:
            from pplgate.quant_utils import valid_group_sizes

            raise VariantError(
                f"awq: q_group_size {self.group_size} does not fit {ctx.source.describe()}: "
                + "; ".join(problems)
                + f". Sizes that fit: {valid_group_sizes(config) or 'none of 128/64/32'}"
            )
        self._calibration_all()

    def cache_key_parts(self, ctx: ModelContext, calibration_sha256: str) -> dict[str, Any]:
        variant = {
            "kind": self.kind,
            **self.quant_config(),
            "apply_clip": self.apply_clip,
            "duo_scaling": self.duo_scaling,
            "quant_dtype": resolve_dtype(self.dtype_param, ctx.device),
            "calibration_seqlen": self.calibration.seqlen,
            "pplgate_awq_impl": AWQ_IMPL_VERSION,
        }
        return cache_key_parts(ctx.source, variant, calibration_sha256, library_versions(*VERSIONS_KEYED))

    def _quantize(self, ctx: ModelContext, dtype: str, texts: list[str], tokenizer):
        model = ctx.load(dtype, fresh=True)
        strip_load_quantization(model)
        mt = model.config.model_type
        cls = awq_model_map()[mt]
        from awq.models._config import AwqConfig

        wrapper = cls(model, mt, is_quantized=False, config=model.config, quant_config=AwqConfig(), processor=None)
        with _best_scale_snapshot_shim(), library_bars_off():  # AutoAWQ's "AWQ"/"Packing" bars: tty only
            wrapper.quantize(
                tokenizer,
                quant_config=self.quant_config(),
                calib_data=texts,
                max_calib_samples=len(texts),
                max_calib_seq_len=self.calibration.seqlen,
                apply_clip=self.apply_clip,
                duo_scaling=self.duo_scaling,
            )
        wrapper.model.to(resolve_device(ctx.device))
        return wrapper

    def prepare(self, ctx: ModelContext) -> PreparedModel:
        self.check(ctx)
        t0 = time.perf_counter()
        dtype = resolve_dtype(self.dtype_param, ctx.device)
        tokenizer = ctx.tokenizer if ctx.tokenizer is not None else load_tokenizer(ctx.source)
        try:
            cal = select_calibration(
                self._calibration_all(), tokenizer, self.calibration.n_samples, self.calibration.seqlen
            )
        except CalibrationError as exc:
            raise VariantError(f"awq calibration: {exc}") from exc
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
            t1 = time.perf_counter()
            wrapper = self._quantize(ctx, dtype, list(cal.texts), tokenizer)
            info.update(quantize_time_s=time.perf_counter() - t1, cache="off", **_awq_kernel_info(wrapper.model))
            return PreparedModel(wrapper.model, "quantized", time.perf_counter() - t0, info)

        built: dict[str, Any] = {}

        def build(tmp: Path) -> dict[str, Any]:
            t1 = time.perf_counter()
            wrapper = self._quantize(ctx, dtype, list(cal.texts), tokenizer)
            built["quantize_time_s"] = time.perf_counter() - t1
            t2 = time.perf_counter()
            wrapper.save_quantized(str(tmp / "model"))
            tokenizer.save_pretrained(str(tmp / "model"))
            built["save_time_s"] = time.perf_counter() - t2
            built["wrapper"] = wrapper
            return {"quantize_time_s": built["quantize_time_s"], "key_parts": parts}

        entry, hit = cache.get_or_build(key, build, {"source": ctx.source.describe(), "variant": self.fingerprint()})
        info["cache_entry"] = str(entry.path)
        if hit:
            t1 = time.perf_counter()
            model, how = load_awq_checkpoint(str(entry.path / "model"), ctx.device, dtype)
            info.update(
                load_time_s=time.perf_counter() - t1,
                load_path=how,
                quantize_time_s_when_built=entry.meta.get("quantize_time_s"),
                **_awq_kernel_info(model),
            )
            return PreparedModel(model, "cache", time.perf_counter() - t0, info)
        wrapper = built.get("wrapper")
        if wrapper is None:  # another worker built it while we waited on the lock's rename race
            model, how = load_awq_checkpoint(str(entry.path / "model"), ctx.device, dtype)
            info.update(load_path=how, **_awq_kernel_info(model))
            return PreparedModel(model, "cache", time.perf_counter() - t0, info)
        info.update(
            quantize_time_s=built["quantize_time_s"],
            save_time_s=built["save_time_s"],
            **_awq_kernel_info(wrapper.model),
        )
        return PreparedModel(wrapper.model, "quantized", time.perf_counter() - t0, info)


@register
class AwqCheckpointVariant(_AwqBase):
    """A pre-quantized AWQ checkpoint loaded as deployed. params: ``checkpoint`` (directory or hub
    id; default: the baseline's model source), ``revision``, ``dtype`` (``auto``)."""

    kind = "awq-checkpoint"
    params_allowed = ("checkpoint", "revision", "dtype")

    def __init__(self, params: Mapping[str, Any] | None = None) -> None:
        super().__init__(params)
        self._common_params()
        self.checkpoint = self.params.get("checkpoint")
        self.revision = self.params.get("revision")

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
            from pplgate.models import ModelSource

            fp["checkpoint"] = source_fingerprint(ModelSource(*self._target(None)[:1], revision=self.revision))
        fp["autoawq"] = library_versions("autoawq")["autoawq"]
        return fp

    def check(self, ctx: ModelContext) -> None:
        import_autoawq()
        resolve_dtype(self.dtype_param, ctx.device)
        path, revision = self._target(ctx)
        from pplgate.models import ModelSource

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
        _check_kernel(
            str(qc.get("version", "gemm")).lower(),
            int(qc.get("bits", qc.get("w_bit", 4))),
            bool(qc.get("zero_point", True)),
            ctx.device,
        )

    def prepare(self, ctx: ModelContext) -> PreparedModel:
        self.check(ctx)
        dtype = resolve_dtype(self.dtype_param, ctx.device)
        path, revision = self._target(ctx)
        t0 = time.perf_counter()
        model, how = load_awq_checkpoint(path, ctx.device, dtype, revision)
        info = {"dtype": dtype, "load_path": how, "checkpoint": path, **_awq_kernel_info(model)}
        return PreparedModel(model, "loaded", time.perf_counter() - t0, info)
