"""AutoAWQ 0.2.9 as pplgate uses it: the banner-free import, the kernel probe, the CPU scale-search
shim, the CPU checkpoint loader and the one-collection-per-load shim. The ``awq`` kinds
(:mod:`pplgate.models.awq`) build on these. Another AutoAWQ version is refused (:func:`require_autoawq`).

Kernel path (``WQLinear_GEMM.forward``, AutoAWQ 0.2.9): ``awq_ext`` (CUDA extension) if installed,
else Triton (``awq_gemm_triton`` / ``awq_dequantize_triton`` + fp16 matmul for >= 1024 rows) when
``triton`` imports, else the naive path (``dequantize_gemm`` in torch + fp16 ``torch.matmul``).
Inputs are cast to fp16 and the output back. On CPU (no awq_ext, no triton) that naive path is
the one used. :func:`gemm_kernel_path` says which.

Loading a checkpoint (:func:`load_awq_checkpoint`): on CUDA, ``AutoAWQForCausalLM.from_quantized(path,
fuse_layers=False, device_map={"": device}, torch_dtype=...)`` as users deploy it (fused layers are an
inference optimisation for generation with a KV cache; the protocol runs without cache). On CPU,
``from_quantized`` insists on the IPEX kernel (``intel_extension_for_pytorch``); without IPEX pplgate
performs the same steps as ``from_quantized`` (``_load_config``, ``_load_quantized_modules`` with
``use_ipex=False``, ``load_checkpoint_and_dispatch``), so the same ``WQLinear_GEMM`` modules run.

Quantizing on CPU needs a workaround for an AutoAWQ 0.2.9 aliasing bug in the scale search (its weight
snapshot is ``v.cpu()``, an alias on CPU, and the search scales the weights in place):
:func:`best_scale_snapshot_shim` is active around ``quantize``. Without it every scaled Linear computes
``W * s0`` instead of ``W``.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
from typing import Any

import torch

from pplgate.errors import VariantError
from pplgate.models.compat import require_version
from pplgate.models.source import resolve_device, torch_dtype

AUTOAWQ_VERSION = "0.2.9"  # the version every patch here is written for
AWQ_INSTALL = f"pip install --no-deps autoawq=={AUTOAWQ_VERSION}"
AWQ_BANNER = "AutoAWQ is officially deprecated"  # in the DeprecationWarning that `import awq` issues
AWQ_VERSIONS = ("gemm", "gemv", "gemv_fast", "marlin")


def require_autoawq() -> None:
    """VariantError unless the installed AutoAWQ is the version these patches are written for."""
    require_version("autoawq", AUTOAWQ_VERSION, AWQ_INSTALL)


def import_autoawq():
    """Import AutoAWQ without its end-of-maintenance banner (other warnings pass); VariantError if missing
    or not the version pplgate's patches are written for."""
    if importlib.util.find_spec("awq") is None:
        raise VariantError(f"the awq variants need AutoAWQ: {AWQ_INSTALL}")
    require_autoawq()
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


def check_kernel(version: str, w_bit: int, zero_point: bool, device: str | torch.device) -> None:
    """Whether AutoAWQ has a kernel for this version / bit width / zero point on ``device`` (VariantError if not)."""
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
def best_scale_snapshot_shim():
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
    require_autoawq()
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


class _CollectOnce:
    """Stands in for the ``gc`` module inside ``awq.models.base`` (see :func:`one_gc_per_load`)."""

    def __init__(self) -> None:
        self.calls = 0

    def collect(self, generation: int = 2) -> int:
        self.calls += 1
        return 0


@contextlib.contextmanager
def one_gc_per_load():
    """One ``gc.collect()`` after loading a checkpoint instead of one per decoder layer.

    ``BaseAWQForCausalLM._load_quantized_modules`` (AutoAWQ 0.2.9) runs ``gc.collect()`` after replacing
    each layer's Linears. A full collection walks every object the process holds (torch, transformers,
    llm-compressor: ~0.2 s each on the runners), so SmolLM2's 30 layers cost 6-9 s of a 7-9 s load. The
    shim replaces the ``gc`` name in that module by an object whose ``collect`` only counts, and runs one
    real collection at the end. The weights and modules are the same; only when garbage is freed moves.
    """
    import gc

    require_autoawq()
    import awq.models.base as awq_base

    if getattr(awq_base, "gc", None) is not gc:
        raise VariantError(
            "AutoAWQ's awq.models.base no longer uses the gc module as pplgate expects "
            f"(found {getattr(awq_base, 'gc', None)!r}); pplgate supports autoawq==0.2.9"
        )
    stand_in = _CollectOnce()
    awq_base.gc = stand_in  # type: ignore[assignment]
    try:
        yield stand_in
    finally:
        awq_base.gc = gc
        gc.collect()


def _fix_wq_dtypes(model: torch.nn.Module) -> None:
    """WQLinear_GEMM keeps fp16 scales/bias whatever the model dtype (its kernel computes in fp16)."""
    from awq.modules.linear.gemm import WQLinear_GEMM

    for mod in model.modules():
        if isinstance(mod, WQLinear_GEMM):
            mod.scales = mod.scales.to(torch.float16)
            if mod.bias is not None:
                mod.bias = mod.bias.to(torch.float16)


def load_awq_checkpoint(
    path: str, device: str | torch.device = "auto", dtype: str = "fp16", revision: str | None = None
):
    """Load a saved AWQ checkpoint (directory or hub id) as an HF model with WQLinear modules.

    Returns ``(model, how)``; ``how`` says which loading path ran (see the module doc).
    """
    import_autoawq()
    from awq import AutoAWQForCausalLM

    dev = resolve_device(device)
    tdtype = torch_dtype(dtype)
    if dev.type == "cuda":
        kw: dict[str, Any] = {"download_kwargs": {"revision": revision}} if revision else {}
        with one_gc_per_load():
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
        with one_gc_per_load():
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


CPU_GEMM = "naive on CPU: dequantize_gemm once per module, fp32 matmul rounded to fp16 (pplgate)"


def _cpu_forward(self: Any, x: torch.Tensor) -> torch.Tensor:
    """``WQLinear_GEMM.forward``'s naive path with the product in fp32: AutoAWQ casts the input to fp16 and
    multiplies it with the fp16 de-quantized weights in fp16, which a CPU without fp16 arithmetic runs ~30x
    slower than fp32 (2.8 s vs 0.085 s for 4096x576x1536 on an AMD EPYC). Same operands, the product
    accumulated in fp32 and rounded to fp16 once: equal up to the last fp16 bit of a few outputs."""
    out_shape = x.shape[:-1] + (self.out_features,)
    out = torch.matmul(x.to(torch.float16).float(), self.pplgate_weight_fp32).to(torch.float16)
    if self.bias is not None:
        out = out + self.bias
    return out.to(x.dtype).reshape(out_shape)


def cpu_gemm(model: torch.nn.Module) -> int:
    """Each ``WQLinear_GEMM`` on the CPU de-quantizes its weights once (AutoAWQ's own ``dequantize_gemm``) and
    runs :func:`_cpu_forward`, AutoAWQ's naive path; returns the number of modules switched. Also where
    Triton or AutoAWQ's CUDA extension is installed (a GPU runner's CPU tier): their kernels need CUDA
    tensors, and AutoAWQ would hand them CPU ones."""
    import_autoawq()
    from awq.modules.linear.gemm import WQLinear_GEMM
    from awq.utils.packing_utils import dequantize_gemm

    n = 0
    for m in model.modules():
        if isinstance(m, WQLinear_GEMM) and m.qweight.device.type == "cpu":
            w = dequantize_gemm(m.qweight, m.qzeros, m.scales, m.w_bit, m.group_size)
            m.pplgate_weight_fp32 = w.to(torch.float16).float()  # an attribute, not a buffer: state_dict unchanged
            m.forward = _cpu_forward.__get__(m)
            n += 1
    return n


def awq_kernel_info(model: torch.nn.Module) -> dict[str, Any]:
    """Which kernel the model's AWQ modules run (switching them to :func:`cpu_gemm` on CPU)."""
    names = sorted({type(m).__name__ for m in model.modules() if type(m).__name__.startswith("WQLinear")})
    n = sum(1 for m in model.modules() if type(m).__name__.startswith("WQLinear"))
    return {"quant_modules": names, "n_quant_linears": n, "kernel": CPU_GEMM if cpu_gemm(model) else gemm_kernel_path()}
