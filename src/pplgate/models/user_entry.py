"""``user``: the team's own quantizer, named by an entry point ``"package.module:function"``.

The function is called as ``function(model, tokenizer, calibration_texts, **params)`` and returns the
model to measure (it may change ``model`` in place and return it). With ``config:`` a file (a recipe
or config the function reads) is passed as ``config_path=`` too.

What the function quantized is checked (:mod:`pplgate.models.coverage`): a decoder weight counts as quantized when
its values changed from the float model's (or its module is a packed / compressed-tensors one); an eligible weight
left unchanged is an error naming it unless ``ignore:`` lists it (module names or ``re:`` patterns, kept in full
precision on purpose; not part of the fingerprint: it decides a check, not the number), and so is a model whose
probe logits equal the float model's.

What decides the number goes into the fingerprint: the entry's name, its params, the calibration
content hash, the config file's content hash, the dtype. The *code* does not: the gate judges a code
change by the tolerance (a measured move, not drift). The code's hash (every file of the entry's
top-level package, data files included; bytecode and ``__pycache__`` left out; plus every file of the
entry's ``code_paths:``, files or folders resolved against the baseline file's folder, e.g. a helper package
in another top-level package or a data file outside the package; code reached otherwise, e.g. an installed
library, is *not* covered) keys the quantization cache and is recorded in the provenance, so a changed file
re-quantizes, an unchanged tree is a cache hit, and a failure message shows the hash old -> new.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pplgate.errors import CalibrationError, PplgateError, VariantError
from pplgate.models.base_check import base_record, finish_record, hit_problem, rebuild_on_mismatch
from pplgate.models.calibration import CalibrationSpec, VariantCalibration
from pplgate.models.coverage import Coverage, check_changed, model_coverage, probe_logits, weight_digests
from pplgate.models.failures import one_line
from pplgate.models.hashing import SKIP_DIRS, library_versions, sha256_file
from pplgate.models.layers import architecture, strip_load_quantization
from pplgate.models.quant_cache import QuantCache, cache_key, cache_key_parts
from pplgate.models.source import load_tokenizer, torch_dtype
from pplgate.models.variant import ModelContext, PreparedModel, Variant
from pplgate.protocol.progress import library_bars_off

USER_PARAMS = ("entry", "params", "calibration", "config", "dtype", "ignore", "code_paths")
IMPORT_FIX = (
    "when the package lives in your repository put its folder on the import path (pytest.ini: `pythonpath = .`, "
    "or [tool.pytest.ini_options] pythonpath in pyproject.toml; PYTHONPATH=. for pplgate compare), else install "
    "it (pip install -e path/to/it); or fix the module name"
)
IGNORE_FIX = (
    "quantize them, or list their modules in the entry's ignore: (names or re: patterns) to keep them in full "
    "precision on purpose"
)
VERSIONS_KEYED = ("transformers", "torch", "accelerate")


def _package_files(root: Path) -> list[Path]:
    """Every file of a package directory (code and data: a changed ``scales.json`` re-quantizes too), without
    bytecode and build leftovers."""
    return sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and p.suffix not in (".pyc", ".pyo") and not (SKIP_DIRS & set(p.relative_to(root).parts))
    )


def user_frame(exc: BaseException, entry: str) -> str:
    """`` (at pkg/mod.py:12 in quantize)``: the last frame of ``exc``'s traceback inside the entry's package."""
    spec = importlib.util.find_spec(entry.split(":")[0].split(".")[0])
    if spec is None or spec.origin is None:
        return ""
    roots = [Path(r) for r in (spec.submodule_search_locations or [])] or [Path(spec.origin)]
    inside = [
        f for f in traceback.extract_tb(exc.__traceback__) if any(Path(f.filename).is_relative_to(r) for r in roots)
    ]
    if not inside:
        return ""
    f = inside[-1]
    return f" (at {Path(f.filename).relative_to(roots[0].parent)}:{f.lineno} in {f.name})"


def code_sha256(module_name: str, extra: Sequence[Path] = ()) -> tuple[str, int]:
    """``(sha256, n_files)`` of every file of ``module_name``'s top-level package (or the module's file) and of
    the ``extra`` files and folders (an entry's ``code_paths``, already resolved), named by their place in the
    package or under the extra path's own name (never an absolute path: two checkouts share a hash)."""
    top = module_name.split(".")[0]
    spec = importlib.util.find_spec(top)
    if spec is None or spec.origin is None:
        raise VariantError(f"user: cannot locate the code of {top!r} to hash it")
    roots = list(spec.submodule_search_locations or [])
    files = sorted(p for r in roots for p in _package_files(Path(r))) if roots else [Path(spec.origin)]
    named = [(str(f.relative_to(roots[0]) if roots else Path(f.name)), f) for f in files]
    for i, path in enumerate(extra):
        inside = _package_files(path) if path.is_dir() else [path]
        named += [(f"code_paths[{i}]/{path.name}/{f.relative_to(path) if path.is_dir() else ''}", f) for f in inside]
    h = hashlib.sha256()
    for rel, f in named:
        h.update(rel.encode() + b"\0" + sha256_file(f).encode() + b"\n")
    return h.hexdigest(), len(named)


def load_entry(entry: str) -> Callable[..., Any]:
    """The function named ``"package.module:function"``; errors say what to fix."""
    module_name, sep, attr = entry.partition(":")
    if not sep or not module_name or not attr:
        raise VariantError(f"user: entry {entry!r} must read 'package.module:function'")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:
        raise VariantError(f"user: entry {entry!r} does not import ({one_line(exc)}); {IMPORT_FIX}") from exc
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise VariantError(f"user: entry {entry!r}: module {module_name!r} has no attribute {part!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise VariantError(f"user: entry {entry!r} is a {type(obj).__name__}, not a callable")
    return obj


class UserEntryVariant(Variant):
    """The model as the user's quantizer function returns it."""

    kind = "user"
    summary = "the team's own quantizer function(model, tokenizer, calibration_texts, **params) -> model"
    params_allowed = USER_PARAMS

    def __init__(self, params: Mapping[str, Any] | None = None) -> None:
        super().__init__(params)
        entry = self.params.get("entry")
        if not isinstance(entry, str) or not entry:
            raise VariantError("user: params.entry is required: 'package.module:function'")
        self.entry = entry
        kwargs = self.params.get("params", {})
        if not isinstance(kwargs, Mapping):
            raise VariantError(f"user: params.params must be a mapping of keyword arguments, got {kwargs!r}")
        self.kwargs = dict(kwargs)
        config = self.params.get("config")
        if config is not None and (not isinstance(config, str) or not config):
            raise VariantError(f"user: config must be a file path, got {config!r}")
        self.config = config
        ignore = self.params.get("ignore", [])
        if isinstance(ignore, str):
            ignore = [ignore]
        if not isinstance(ignore, list) or not all(isinstance(x, str) and x for x in ignore):
            raise VariantError(f"user: ignore must be a list of module names or 're:' patterns, got {ignore!r}")
        self.ignore: list[str] = ignore
        code_paths = self.params.get("code_paths", [])
        if isinstance(code_paths, str):
            code_paths = [code_paths]
        if not isinstance(code_paths, list) or not all(isinstance(x, str) and x for x in code_paths):
            raise VariantError(f"user: code_paths must be a list of file or folder paths, got {code_paths!r}")
        self.code_paths: list[str] = code_paths
        self.dtype_param = self.dtype_from_params()
        cal = self.params.get("calibration")
        try:
            self.calibration = CalibrationSpec.from_param(cal) if cal is not None else None
        except CalibrationError as exc:
            raise VariantError(f"user: {exc}") from exc
        self.calibration_texts = VariantCalibration(self.calibration, self.kind)

    def _config_path(self) -> Path | None:
        if self.config is None:
            return None
        p = Path(os.path.abspath(Path(self.config).expanduser()))
        if not p.is_file():
            raise VariantError(f"user: config file {p} does not exist")
        return p

    def _code_paths(self) -> list[Path]:
        """The entry's ``code_paths`` (resolved against the baseline file's folder at parsing; elsewhere against
        the current directory), each an existing file or folder."""
        out = []
        for raw in self.code_paths:
            p = Path(os.path.abspath(Path(os.path.expandvars(raw)).expanduser()))
            if not p.exists():
                raise VariantError(
                    f"user: code_paths entry {raw!r} does not exist (resolved to {p}); a relative path in a "
                    "baseline file is relative to that file's folder: fix or remove it"
                )
            out.append(p)
        return out

    def collection_check(self) -> None:
        """What fails in seconds at collection, before any measurement: the module imports (its typo or a
        missing ``pythonpath``), the entry's ``config`` and ``code_paths`` exist. Loads no model."""
        load_entry(self.entry)
        self._config_path()
        self._code_paths()

    def code_hash(self) -> tuple[str, int]:
        """``(sha256, n_files)`` of the entry's package and ``code_paths`` (:func:`code_sha256`)."""
        return code_sha256(self.entry.partition(":")[0], self._code_paths())

    def fingerprint(self) -> dict[str, Any]:
        cal = self.calibration_texts.all()
        config = self._config_path()
        return {
            "kind": self.kind,
            "entry": self.entry,
            "params": self.kwargs,
            "dtype": self.dtype_param,
            "calibration": None
            if cal is None
            else {
                "source_sha256": cal.sha256,
                "n_samples": self.calibration.n_samples,
                "seqlen": self.calibration.seqlen,
            },
            "config_sha256": None if config is None else sha256_file(config),
        }

    def check(self, ctx: ModelContext) -> None:
        self.collection_check()
        self.calibration_texts.all()
        ctx.dtype(self.dtype_param)

    def _texts(self, tokenizer: Any) -> tuple[list[str], str | None]:
        sel = self.calibration_texts.selected(tokenizer)
        return ([], None) if sel is None else (list(sel.texts), sel.sha256)

    def coverage(self, model: Any, base: dict[str, Any]) -> Coverage:
        """What ``model`` holds quantized against the float model's weight digests ``base``, checked."""
        coverage = model_coverage(model, base=base, ignore=self.ignore)
        coverage.check(self.kind, architecture(model.config), fix=IGNORE_FIX)
        return coverage

    def _quantize(self, ctx: ModelContext, dtype: str, tokenizer: Any, texts: list[str]) -> tuple[Any, Coverage, dict]:
        fn = load_entry(self.entry)
        model = ctx.load(dtype, fresh=True)
        strip_load_quantization(model)
        base, base_logits, record = weight_digests(model), probe_logits(model), base_record(model)
        arch = type(model).__name__
        kwargs = dict(self.kwargs)
        config = self._config_path()
        if config is not None:
            kwargs["config_path"] = str(config)
        try:
            out = fn(model, tokenizer, texts, **kwargs)
        except PplgateError:
            raise
        except Exception as exc:  # the team's code failed: one line with its own frame, not pytest's traceback
            raise VariantError(
                f"user: {self.entry} raised {one_line(exc)}{user_frame(exc, self.entry)}; fix the quantizer (or its "
                "params) and run again"
            ) from exc
        if out is None:
            raise VariantError(f"user: {self.entry} returned None; it must return the model to measure")
        if type(out).__name__ != arch or not hasattr(out, "config"):
            raise VariantError(
                f"user: {self.entry} returned a {type(out).__name__}, not a model of the source's architecture ({arch})"
            )
        self._refuse_meta(out)
        coverage = self.coverage(out, base)
        check_changed(base_logits, probe_logits(out), self.kind, architecture(out.config))
        return out, coverage, finish_record(record, out)

    def _refuse_meta(self, model: Any) -> None:
        """A model with tensors on ``meta`` (shapes without values: never materialized) is one clear error."""
        tensors = [*model.named_parameters(), *model.named_buffers()]
        meta = [name for name, t in tensors if t.is_meta]
        if meta:
            raise VariantError(
                f"user: {self.entry} returned a model with {len(meta)} of {len(tensors)} tensors on the meta device "
                f"(e.g. {meta[0]}): shapes without values, nothing to measure; return a model whose weights are "
                "loaded (not built under init_empty_weights / device='meta', nor offloaded without its weights)"
            )

    def prepare(self, ctx: ModelContext) -> PreparedModel:
        self.ensure_checked(ctx)
        t0 = time.perf_counter()
        dtype = ctx.dtype(self.dtype_param)
        tokenizer = ctx.tokenizer if ctx.tokenizer is not None else load_tokenizer(ctx.source)
        texts, cal_sha = self._texts(tokenizer)
        code, n_files = self.code_hash()
        info: dict[str, Any] = {"dtype": dtype, "code_sha256": code, "code_files": n_files}
        cache = QuantCache(ctx.cache_dir, ctx.cache_mode)
        if not cache.enabled:
            model, coverage, _ = self._quantize(ctx, dtype, tokenizer, texts)
            info.update(quantize_time_s=time.perf_counter() - t0, cache="off", coverage=coverage.text())
            return PreparedModel(model, "quantized", time.perf_counter() - t0, info)
        variant = {**self.fingerprint(), "code_sha256": code, "quant_dtype": dtype}
        key = cache_key(cache_key_parts(ctx.source, variant, cal_sha, library_versions(*VERSIONS_KEYED)))
        info["cache_key"] = key
        built: dict[str, Any] = {}

        def build(tmp: Path) -> dict[str, Any]:
            t1 = time.perf_counter()
            built["model"], built["coverage"], record = self._quantize(ctx, dtype, tokenizer, texts)
            built["quantize_time_s"] = time.perf_counter() - t1
            with library_bars_off():  # transformers' "Writing model shards" bar: terminals only
                built["model"].save_pretrained(str(tmp / "model"), safe_serialization=True)
            return {"quantize_time_s": built["quantize_time_s"], "code_sha256": code, "base": record}

        got = cache.get_or_build(key, build, {"source": ctx.source.describe(), "variant": variant})
        if got is None:  # not written (warned): what the build made in memory, else a build without the cache
            info["cache"] = "not written"
            if "model" not in built:
                built["model"], built["coverage"], _ = self._quantize(ctx, dtype, tokenizer, texts)
                built["quantize_time_s"] = time.perf_counter() - t0
        else:
            info["cache_entry"] = str(got[0].path)
        if "model" in built:
            info.update(quantize_time_s=built["quantize_time_s"], coverage=built["coverage"].text())
            return PreparedModel(built["model"], "quantized", time.perf_counter() - t0, info)
        assert got is not None
        entry = got[0]
        from transformers import AutoModelForCausalLM

        with library_bars_off():
            model = AutoModelForCausalLM.from_pretrained(str(entry.path / "model"), dtype=torch_dtype(dtype))
        model.to(ctx.torch_device).eval()
        float_model = ctx.load(dtype)  # the session's float model (the coverage needs it)
        if rebuild_on_mismatch(cache, entry, hit_problem(model, entry.meta.get("base"), ctx.config(), float_model)):
            return self.prepare(ctx)
        info["coverage"] = self.coverage(model, weight_digests(float_model)).text()
        info["quantize_time_s_when_built"] = entry.meta.get("quantize_time_s")
        return PreparedModel(model, "cache", time.perf_counter() - t0, info)
