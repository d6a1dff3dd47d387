"""What the llm-compressor kinds (``gptq``, ``llmc-recipe``) share: calibration, ``oneshot``, the cache.

A kind says which recipe it runs (:meth:`LlmcVariant.recipe`), which weight group sizes it asks for and
how it is fingerprinted; this base does the rest. ``prepare`` loads a fresh copy of the source model in
the compute dtype, cuts the calibration texts into ``seqlen`` blocks (AutoAWQ's rule, fixed order), runs
``oneshot`` in memory (:mod:`pplgate.models.compat.llmcompressor`) and checks what it quantized
(:mod:`pplgate.models.coverage`: every eligible decoder weight, experts included, unless the recipe ignores it;
the probe logits moved). A failure inside llm-compressor or transformers is one line naming the architecture and
the fix (:mod:`pplgate.models.failures`). With the cache on, the model is saved in llm-compressor's native format, a
compressed-tensors directory (``save_pretrained(save_compressed=True)``), and what is measured, then and
on every later hit, is that directory loaded with transformers, as it is deployed (saving compresses the
in-memory modules in place). With the cache off, the in-memory model is measured: cache on vs off is the
save -> load round trip.
"""

from __future__ import annotations

import re
import time
import warnings
from abc import abstractmethod
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from pplgate.errors import CalibrationError, VariantError
from pplgate.models.base_check import base_record, finish_record, hit_problem, rebuild_on_mismatch
from pplgate.models.calibration import CalibrationSpec, VariantCalibration
from pplgate.models.compat.llmcompressor import (
    LLMC_VERSIONS_KEYED,
    awq_resolved_mappings,
    calibration_loader,
    freeze_fake_quant,
    import_llmcompressor,
    run_oneshot,
    undispatch,
)
from pplgate.models.coverage import (
    Coverage,
    check_changed,
    checkpoint_grid,
    checkpoint_ignore,
    model_coverage,
    probe_logits,
)
from pplgate.models.failures import DOCS, library_boundary, raised_in
from pplgate.models.hashing import library_versions
from pplgate.models.layers import (
    ROUTER_NAMES,
    architecture,
    group_size_fix,
    group_size_problems,
    load_config,
    strip_load_quantization,
)
from pplgate.models.quant_cache import QuantCache, cache_key, cache_key_parts
from pplgate.models.source import DTYPE_CHOICES, ModelSource, load_tokenizer, torch_dtype
from pplgate.models.variant import ModelContext, Param, PreparedModel, Variant
from pplgate.protocol.progress import library_bars_off

# ``quant_dtype``: a compute dtype, or fp64 (calibration only)
QUANT_DTYPE_PARAM = Param("quant_dtype", str, "auto", (*DTYPE_CHOICES, "fp64"))

# Version of pplgate's own use of llm-compressor (loader, shims, the gptq recipe); part of the cache key.
# 2: gptq keeps MoE routers (ROUTER_NAMES) in full precision, as llm-compressor's MoE examples do.
LLMC_IMPL_VERSION = 2
# what the kinds keep in full precision whatever the recipe: lm_head (outside the decoder layers) and MoE routers
ROUTER_IGNORE = ["lm_head", f"re:.*\\.({'|'.join(ROUTER_NAMES)})$"]
RELOAD_FIX = (
    "the gate's --pplgate-cache off measures the in-memory quantized model instead (no checkpoint round trip; a "
    "deployment that loads this checkpoint with this transformers fails the same way)"
)


def oneshot_fix(arch: str) -> Callable[[BaseException], str]:
    """The fix for a failure inside ``oneshot``: AWQ's default mappings do not fit ``arch``, or another failure."""

    def fix(exc: BaseException) -> str:
        if raised_in(exc, "llmcompressor/modifiers/transform/awq") or raised_in(exc, "llmcompressor/modifiers/awq"):
            return (
                f"AWQModifier's default mappings do not fit {arch}: give it `mappings:` for this architecture (each "
                f"smooth_layer with the balance_layers it feeds; examples in {DOCS})"
            )
        return f"this recipe does not run on {arch} with this llm-compressor; {DOCS} lists the kinds that do"

    return fix


class LlmcVariant(Variant):
    """Base of the kinds that quantize with llm-compressor's ``oneshot``."""

    calibration_required: bool = True
    whole_row: str | None = "strategy: channel (one scale per output row)"  # a group-size error offers it

    def __init__(self, params: Mapping[str, Any] | None = None) -> None:
        super().__init__(params)
        self.dtype_param: str = self.dtype_from_params()
        if self.params.get("quant_dtype") is not None:
            QUANT_DTYPE_PARAM.read(self.params, self.kind)
        cal = self.params.get("calibration")
        try:
            self.calibration = None if cal is None and not self.needs_calibration() else CalibrationSpec.from_param(cal)
        except CalibrationError as exc:
            raise VariantError(f"{self.kind}: {exc}") from exc
        self.calibration_texts = VariantCalibration(self.calibration, self.kind)

    # -- what a kind says --------------------------------------------------------------------------------
    def needs_calibration(self) -> bool:
        return self.calibration_required

    @abstractmethod
    def recipe(self) -> Any:
        """The recipe for ``oneshot``: a list of modifiers or a Recipe."""

    @abstractmethod
    def group_sizes(self) -> set[int]:
        """The weight group sizes the recipe asks for (checked against the model's widths up front)."""

    @abstractmethod
    def recipe_fingerprint(self) -> dict[str, Any]:
        """The kind's own fields of the fingerprint (what, besides calibration and dtype, decides the number)."""

    def requires_every_linear(self) -> bool:
        """Whether every decoder Linear must come out quantized (a recipe may target fewer on purpose)."""
        return True

    def ignore_patterns(self) -> list[str]:
        """Module names / ``re:`` patterns kept in full precision on purpose (not counted as left unquantized)."""
        return list(ROUTER_IGNORE)

    def missing_fix(self) -> str:
        """What to do when an eligible decoder weight came out unquantized."""
        return "llm-compressor did not quantize them: report the architecture"

    def quant_dtype(self, ctx: ModelContext, dtype: str) -> str:
        """The dtype the model is in while llm-compressor calibrates (``quant_dtype``; default the compute dtype).
        ``fp64``: the compute-dtype model upcast, with GPTQ's own arithmetic in float64 too (reproducible across
        CPU types and thread counts: :mod:`pplgate.models.compat.llmcompressor`)."""
        q = self.params.get("quant_dtype")
        return dtype if q in (None, "auto") else "fp64" if q == "fp64" else ctx.dtype(q)

    # -- shared ------------------------------------------------------------------------------------------
    def fingerprint(self) -> dict[str, Any]:
        cal = self.calibration_texts.all()
        return {
            "kind": self.kind,
            **self.recipe_fingerprint(),
            "dtype": self.dtype_param,
            **({"quant_dtype": self.params["quant_dtype"]} if self.params.get("quant_dtype") else {}),
            "calibration": None
            if cal is None
            else {
                "source_sha256": cal.sha256,
                "n_samples": self.calibration.n_samples,
                "seqlen": self.calibration.seqlen,
            },
            "llmcompressor": library_versions("llmcompressor")["llmcompressor"],
        }

    def check(self, ctx: ModelContext) -> None:
        import_llmcompressor(self.kind)
        ctx.dtype(self.dtype_param)
        try:
            config = ctx.config()
        except Exception as exc:
            raise VariantError(f"{self.kind}: cannot read the config of {ctx.source.describe()}: {exc}") from exc
        for g in sorted(self.group_sizes()):
            problems = group_size_problems(config, g)
            if problems:
                raise VariantError(
                    f"{self.kind}: group size {g} does not fit {ctx.source.describe()}: "
                    + "; ".join(problems)
                    + f"; {group_size_fix(config, self.whole_row)} (llm-compressor would fail or leave such layers "
                    "unquantized; pplgate never skips a layer silently)"
                )
        self.calibration_texts.all()
        self.recipe()  # a recipe that does not build fails here, before any work

    def _quantize(self, ctx: ModelContext, dtype: str, tokenizer: Any, texts: list[str]) -> tuple[Any, dict, dict]:
        quant_dtype = self.quant_dtype(ctx, dtype)
        model = ctx.load(dtype if quant_dtype == "fp64" else quant_dtype, fresh=True)
        strip_load_quantization(model)
        arch = architecture(model.config)
        base, record = probe_logits(model), base_record(model)
        if quant_dtype == "fp64":  # the measured model's weights, exactly, in float64
            model.to(torch.float64)
        loader, n_blocks = (None, 0)
        if self.calibration is not None:
            loader, n_blocks = calibration_loader(tokenizer, texts, self.calibration.seqlen)
        t0 = time.perf_counter()
        with library_boundary(self.kind, arch, "llmcompressor", oneshot_fix(arch)), awq_resolved_mappings() as awq:
            logs = run_oneshot(model, tokenizer, self.recipe(), loader)
        if awq and not all(awq):
            raise VariantError(
                f"{self.kind}: AWQModifier matched none of its mappings on this {arch} model and smoothed nothing (the "
                f"number would be the quantization step's alone): give it `mappings:` for this architecture ({DOCS})"
            )
        model.to(ctx.torch_device)
        info: dict[str, Any] = {"quantize_time_s": round(time.perf_counter() - t0, 3), "calibration_blocks": n_blocks}
        coverage = model_coverage(model, ignore=self.ignore_patterns(), ignored_by="the recipe's ignore")
        coverage.check(self.kind, arch, allow_missing=not self.requires_every_linear(), fix=self.missing_fix())
        info.update(coverage=coverage.text(), n_quantized_linears=len(coverage.quantized), quant_dtype=quant_dtype)
        model.to(torch_dtype(dtype))  # quantized in quant_dtype, measured in the compute dtype
        check_changed(base, probe_logits(model), self.kind, arch)
        if logs:
            info["llmcompressor_warnings"] = [f"{r['level']}: {r['message'][:300]}" for r in logs]
        return model, info, finish_record(record, model)

    def _in_memory(self, ctx: ModelContext, dtype: str, tokenizer: Any, texts: list[str], info: dict, t0: float):
        model, qinfo, _ = self._quantize(ctx, dtype, tokenizer, texts)
        freeze_fake_quant(model)
        info.update(qinfo)
        return PreparedModel(model, "quantized", time.perf_counter() - t0, info)

    def prepare(self, ctx: ModelContext) -> PreparedModel:
        self.ensure_checked(ctx)
        t0 = time.perf_counter()
        dtype = ctx.dtype(self.dtype_param)
        tokenizer = ctx.tokenizer if ctx.tokenizer is not None else load_tokenizer(ctx.source)
        texts: list[str] = []
        cal_sha = None
        info: dict[str, Any] = {"dtype": dtype}
        sel = self.calibration_texts.selected(tokenizer)
        if sel is not None:
            texts, cal_sha = list(sel.texts), sel.sha256
            info.update(calibration_source=sel.source, calibration_sha256=cal_sha, calibration_n_texts=len(texts))
        cache = QuantCache(ctx.cache_dir, ctx.cache_mode)
        if not cache.enabled:
            return self._in_memory(ctx, dtype, tokenizer, texts, {**info, "cache": "off"}, t0)
        variant = {
            **self.fingerprint(),
            "compute_dtype": dtype,
            "calibration_dtype": self.quant_dtype(ctx, dtype),
            "pplgate_llmc_impl": LLMC_IMPL_VERSION,
        }
        key = cache_key(cache_key_parts(ctx.source, variant, cal_sha, library_versions(*LLMC_VERSIONS_KEYED)))
        info["cache_key"] = key
        built: dict[str, Any] = {}

        def build(tmp: Path) -> dict[str, Any]:
            model, qinfo, record = self._quantize(ctx, dtype, tokenizer, texts)
            before = probe_logits(model)
            t1 = time.perf_counter()
            with library_bars_off(), warnings.catch_warnings():
                # llm-compressor's save wrapper maps the model as "offloaded" to cpu: transformers warns
                warnings.filterwarnings("ignore", "Attempting to save a model with offloaded modules")
                model.save_pretrained(str(tmp / "model"), save_compressed=True)
                tokenizer.save_pretrained(str(tmp / "model"))
            # compressed-tensors compresses the modules in place to save them: the in-memory model is not
            # measured afterwards (a SmolLM2 Linear had lost its weight); the saved directory is, as on a hit
            built["info"] = {**qinfo, "save_time_s": round(time.perf_counter() - t1, 3)}
            del model
            t2 = time.perf_counter()
            built["model"] = reloaded = load_compressed(tmp / "model", ctx, dtype, kind=self.kind, fix=RELOAD_FIX)
            built["info"]["load_time_s"] = round(time.perf_counter() - t2, 3)
            coverage = loaded_coverage(
                reloaded, self.kind, ModelSource(str(tmp / "model")), self.requires_every_linear()
            )
            built["info"]["coverage"] = coverage.text()
            # raising: no cache entry is left
            built["info"]["reload_check"] = check_reload(before, probe_logits(reloaded), dtype, self.kind)
            return {"quantize_time_s": qinfo["quantize_time_s"], "format": "compressed-tensors", "base": record}

        got = cache.get_or_build(key, build, {"source": ctx.source.describe(), "variant": variant})
        if got is None and "model" not in built:  # not written (warned); saving compresses the in-memory model
            return self._in_memory(ctx, dtype, tokenizer, texts, {**info, "cache": "not written"}, t0)
        info.update(built.get("info", {}), **({"cache_entry": str(got[0].path)} if got else {"cache": "not written"}))
        if "model" in built:  # built now: quantized, saved, loaded back and checked against the in-memory model
            return PreparedModel(built.pop("model"), "quantized", time.perf_counter() - t0, info)
        entry = got[0]
        t1 = time.perf_counter()
        model = load_compressed(entry.path / "model", ctx, dtype, kind=self.kind, fix=RELOAD_FIX)
        info["load_time_s"] = round(time.perf_counter() - t1, 3)
        if rebuild_on_mismatch(cache, entry, hit_problem(model, entry.meta.get("base"), ctx.config(), ctx.held(dtype))):
            return self.prepare(ctx)
        coverage = loaded_coverage(
            model, self.kind, ModelSource(str(entry.path / "model")), self.requires_every_linear()
        )
        info["coverage"] = coverage.text()
        info["quantize_time_s_when_built"] = entry.meta.get("quantize_time_s")
        return PreparedModel(model, "cache", time.perf_counter() - t0, info)


def loaded_coverage(model: torch.nn.Module, kind: str, checkpoint: ModelSource, require_all: bool = True) -> Coverage:
    """The coverage of a loaded quantized checkpoint, checked: what its modules hold (compressed-tensors' marks,
    packed modules, the de-compressed fused experts on the checkpoint's grid); its own ignore list is not eligible.
    The grid and the ignore list come from the checkpoint's config.json (a de-compressed model has dropped them)."""
    config = load_config(checkpoint)
    ignore, by_substring = checkpoint_ignore(config)
    coverage = model_coverage(
        model,
        grid=checkpoint_grid(config),
        ignore=ignore,
        ignore_by_substring=by_substring,
        ignored_by="the checkpoint's ignore list",
    )
    coverage.check(kind, architecture(model.config), allow_missing=not require_all)
    return coverage


def check_reload(before: torch.Tensor, after: torch.Tensor, dtype: str, kind: str) -> str:
    """A saved quantized model must reload as the model that was quantized, else a :class:`VariantError`; returns
    the comparison for the record. fp32: logits within 1e-4 of the largest one. fp16/bf16, whose kernels round
    the two models' slightly different weight bytes (scales stored in the dtype) differently: a relative RMS
    difference of the logits <= 5e-2 (a lost module, re-initialised experts or dropped zero points move them far
    more; top-1 on random probe tokens flips at near-ties: SmolLM2 AWQ on an H100 reloads at RMS 0.0135, 88%)."""
    diff = after - before
    max_diff, scale = diff.abs().max().item(), before.abs().max().item()
    rel_rms = (diff.pow(2).mean().sqrt() / before.pow(2).mean().sqrt().clamp_min(1e-12)).item()
    top1 = (after.argmax(-1) == before.argmax(-1)).float().mean().item()
    stats = f"max |dlogit| {max_diff:.3g} (largest logit {scale:.3g}), relative RMS {rel_rms:.3g}, top-1 {top1:.0%}"
    if dtype == "fp32":
        ok, allowed = max_diff <= 1e-4 * max(scale, 1.0), "max |dlogit| <= 1e-4 of the largest logit"
    else:
        ok, allowed = rel_rms <= 5e-2, "relative RMS <= 5e-2"
    if not ok:
        raise VariantError(
            f"{kind}: the saved checkpoint does not reload as the model that was quantized: on a probe batch, "
            f"{stats} (allowed in {dtype}: {allowed}); nothing is cached or measured (a save/load bug of this "
            "llm-compressor / transformers pair for this architecture)"
        )
    return stats


def check_load_report(
    report: Mapping[str, Any], path: Path | str, kind: str = "hf-checkpoint", arch: str = "", fix: str = ""
) -> None:
    """A checkpoint whose tensors do not map onto the model is never measured: transformers initialises what
    is MISSING at random and drops what is UNEXPECTED (an MoE's packed experts on a fused-expert model)."""
    problems = []
    kinds = (("missing_keys", "MISSING"), ("unexpected_keys", "UNEXPECTED"), ("mismatched_keys", "MISMATCHED"))
    for key, what in kinds:
        keys = sorted(str(k if isinstance(k, str) else k[0]) for k in report.get(key) or ())
        if keys:
            problems.append(f"{len(keys)} {what} ({', '.join(keys[:4])}{', ...' if len(keys) > 4 else ''})")
    if problems:
        raise VariantError(
            f"{kind}: the checkpoint {path} of this {arch or 'unknown'} model does not load as the model it was saved "
            f"from: {'; '.join(problems)}; transformers {library_versions('transformers')['transformers']} would "
            "initialise the missing tensors at random, so nothing is measured (it cannot map the checkpoint's layout "
            f"onto its modules){'; ' + fix if fix else ''}"
        )


def conversion_error(exc: BaseException) -> str:
    """transformers' first weight-conversion error behind ``exc`` ("look at the CONVERSION entries of the above
    report": the report is a log record, its errors live in the raising frame's ``loading_info``), else ``""``."""
    tb = exc.__traceback__
    while tb is not None:
        errors = getattr(tb.tb_frame.f_locals.get("loading_info"), "conversion_errors", None)
        if errors:
            key, text = next(iter(errors.items()))
            lines = [line.strip() for line in str(text).splitlines() if re.match(r"\s*\w*Error: ", line)]
            return f"converting {key}: {' / '.join(lines[:2]) or ' '.join(str(text).split())[:200]}; "
        tb = tb.tb_next
    return ""


def load_compressed(
    path: Path | str,
    ctx: ModelContext,
    dtype: str,
    revision: str | None = None,
    *,
    compressed_tensors: bool = True,
    kind: str = "hf-checkpoint",
    fix: str = "",
) -> torch.nn.Module:
    """A compressed-tensors (or other transformers-loadable quantized) checkpoint, loaded with transformers; a
    failure inside transformers is one :class:`~pplgate.errors.LibraryError` line (``fix`` appended).

    compressed-tensors checkpoints load with ``run_compressed=False``: the weights are de-compressed at load
    (by default transformers does it in a hook on the first forward of the *top-level* model, which the
    engine's chunked loss bypasses by calling the body; the logits are bitwise the same either way).
    """
    from transformers import AutoModelForCausalLM

    kw: dict[str, Any] = {"dtype": torch_dtype(dtype)}
    if revision:
        kw["revision"] = revision
    if compressed_tensors:
        from transformers import CompressedTensorsConfig

        kw["quantization_config"] = CompressedTensorsConfig(run_compressed=False)
    arch = architecture(load_config(ModelSource(str(path), revision=revision)))
    fix = fix or "this transformers cannot load the checkpoint's layout: load it with the versions it was made with"
    boundary = library_boundary(kind, arch, "transformers", lambda e: conversion_error(e) + fix, "cannot load it")
    with boundary, library_bars_off(), warnings.catch_warnings():
        # "You passed `quantization_config` ... the model already has one": run_compressed is the point
        warnings.filterwarnings("ignore", "You passed `quantization_config`")
        model, report = AutoModelForCausalLM.from_pretrained(str(path), output_loading_info=True, **kw)
    check_load_report(report, path, kind, arch, fix)
    if compressed_tensors:
        undispatch(model)  # compressed-tensors' load-time offload wrapping ran every forward on the CPU
    model = model.to(ctx.torch_device).eval()
    if compressed_tensors:
        freeze_fake_quant(model)
    return model
