"""The narrow shims pplgate needs around llm-compressor 0.14.0.1, each for a measured reason (another
llm-compressor version is refused: :func:`require_llmcompressor`).

* **Quiet import**: ``import llmcompressor`` configures loguru with a stdout INFO sink (and logs "No
  accelerator available!" on CPU). We import with ``LLM_COMPRESSOR_LOG_DISABLED=true`` and then
  configure no console sink; :func:`captured_logs` collects the WARNING+ records instead (GPTQ's
  "Hessian inversion failed ... round-to-nearest" fallback exists only as such a line).
* **In-memory model check**: ``Oneshot.validate_model`` re-reads the config from
  ``model.config.name_or_path`` (fails for a GGUF directory, goes to the hub for an id); replaced, for
  the call, by the same check on the in-memory config.
* **CPU pin_memory**: AWQ's smoothing calls ``IntermediatesCache.pin_memory``, which raises "Cannot
  access accelerator device when none is available" on a CPU-only torch. Pinning only speeds host to
  device copies, so without an accelerator it is a no-op for the call.
* **GPTQ in float64** (only for a model calibrated in float64, ``quant_dtype: fp64``): GPTQ accumulates its
  Hessians and solves in ``GPTQ_PRECISION`` (float32). Its column-by-column error feedback turns the last-bit
  differences of another BLAS code path (another CPU type, another thread count) into other rounding
  decisions: the CPU tier's GPTQ moved 1.5% between an Intel Xeon and an AMD EPYC and between 1 and 2
  threads. In float64 (forward passes and GPTQ math) the same weights came out bitwise on both.
* **AWQ that smoothed nothing**: :func:`awq_resolved_mappings` counts what each ``AWQModifier`` resolved (mappings
  that match no module pass silently).
* **No leaks**: the sequential pipeline registers each traced forward's globals (the model with them)
  in ``torch.fx._symbolic_trace._wrapped_fns_to_patch`` forever (dropped after the call:
  :func:`pplgate.models.compat.torch.fx_registry_cleanup`), and the global session keeps the model
  (reset after the call).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from pplgate.errors import VariantError
from pplgate.models.compat import require_version
from pplgate.models.compat.torch import fx_registry_cleanup

LLMC_VERSION = "0.14.0.1"  # the version every patch here is written for
INSTALL = f"pip install 'pplgate[llmcompressor]' (llmcompressor=={LLMC_VERSION}, compressed-tensors==0.19.0)"
LLMC_VERSIONS_KEYED = ("llmcompressor", "compressed-tensors", "transformers", "torch", "accelerate")


@contextlib.contextmanager
def _env(**values: str) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


_quiet: list[bool] = []  # [True] once the logger is configured without a console sink


def require_llmcompressor() -> None:
    """VariantError unless the installed llm-compressor is the version these patches are written for."""
    require_version("llmcompressor", LLMC_VERSION, INSTALL)


def import_llmcompressor(kind: str) -> Any:
    """``llmcompressor``, imported without console output; missing or another version than the patches here
    are written for: a :class:`VariantError` with the fix.

    Imported elsewhere first (a test, the user's code), its stdout sink is removed here all the same.
    """
    require_llmcompressor()
    try:
        with _env(LLM_COMPRESSOR_LOG_DISABLED="true"):
            import llmcompressor
    except ImportError as exc:
        raise VariantError(f"{kind}: llm-compressor is not installed ({exc}); install it: {INSTALL}") from exc
    if not _quiet:
        from llmcompressor.logger import LoggerConfig, configure_logger

        configure_logger(LoggerConfig(disabled=False, console_log_level=None, log_file=None, log_file_level=None))
        _quiet.append(True)
    return llmcompressor


@contextlib.contextmanager
def captured_logs(level: str = "WARNING") -> Iterator[list[dict[str, str]]]:
    """llm-compressor / compressed-tensors loguru records at ``level`` and above, collected, not printed."""
    from loguru import logger

    out: list[dict[str, str]] = []

    def keep(record: Mapping[str, Any]) -> bool:
        name = (record["name"] or "").split(".")[0]
        if name not in ("llmcompressor", "compressed_tensors") or record["level"].name == "METRIC":
            return False
        return not record["message"].startswith("No accelerator available!")  # a CPU run: expected

    hid = logger.add(
        lambda m: out.append({"level": m.record["level"].name, "message": m.record["message"]}),
        level=level,
        filter=keep,
    )
    try:
        yield out
    finally:
        logger.remove(hid)


@contextlib.contextmanager
def in_memory_model_check() -> Iterator[None]:
    """``Oneshot.validate_model`` on the in-memory config instead of one re-read from disk or the hub."""
    require_llmcompressor()
    from llmcompressor.entrypoints.oneshot import Oneshot

    original = Oneshot.validate_model

    def validate_in_memory(self: Any, model: torch.nn.Module) -> None:
        qc = getattr(model.config, "quantization_config", None)
        method = qc.get("quant_method") if isinstance(qc, Mapping) else getattr(qc, "quant_method", None)
        if method is not None:
            raise VariantError(
                f"the model already carries quantization_config (quant_method={method}); "
                "llm-compressor needs an unquantized model"
            )

    Oneshot.validate_model = validate_in_memory
    try:
        yield
    finally:
        Oneshot.validate_model = original


@contextlib.contextmanager
def cpu_pin_memory_noop() -> Iterator[None]:
    """``IntermediatesCache.pin_memory`` as a no-op while no accelerator exists (AWQ on a CPU-only torch)."""
    require_llmcompressor()
    from llmcompressor.pipelines.cache import IntermediatesCache

    if torch.accelerator.is_available():
        yield
        return
    original = IntermediatesCache.pin_memory
    IntermediatesCache.pin_memory = lambda self, batch_index, input_names=None: None
    try:
        yield
    finally:
        IntermediatesCache.pin_memory = original


@contextlib.contextmanager
def gptq_precision(dtype: torch.dtype) -> Iterator[None]:
    """llm-compressor's ``GPTQ_PRECISION`` (Hessian accumulation and solves) set to ``dtype`` for the call."""
    require_llmcompressor()
    from llmcompressor.modifiers.gptq import gptq_quantize, helpers

    if not (helpers.GPTQ_PRECISION is gptq_quantize.GPTQ_PRECISION is torch.float32):
        raise VariantError(
            "llm-compressor's GPTQ_PRECISION is no longer float32 in both of its modules: pplgate's float64 "
            f"calibration shim does not know this version ({INSTALL})"
        )
    helpers.GPTQ_PRECISION = gptq_quantize.GPTQ_PRECISION = dtype
    try:
        yield
    finally:
        helpers.GPTQ_PRECISION = gptq_quantize.GPTQ_PRECISION = torch.float32


@contextlib.contextmanager
def awq_resolved_mappings() -> Iterator[list[int]]:
    """How many mappings each ``AWQModifier`` resolved on the model, one count per modifier run. A count of 0 is
    an AWQ step that smoothed nothing: mappings matching no module raise nothing and log nothing (Falcon's new
    layout under the default mappings), so the recipe's number would be its QuantizationModifier's alone."""
    require_llmcompressor()
    from llmcompressor.modifiers.transform.awq.base import AWQModifier

    counts: list[int] = []
    original = AWQModifier._set_resolved_mappings

    def counted(self: Any, model: torch.nn.Module) -> None:
        original(self, model)
        counts.append(len(self._resolved_mappings))

    AWQModifier._set_resolved_mappings = counted
    try:
        yield counts
    finally:
        AWQModifier._set_resolved_mappings = original


def calibration_loader(tokenizer: Any, texts: Sequence[str], seqlen: int) -> tuple[Any, int]:
    """AutoAWQ's rule: tokenize each text, concatenate, cut ``seqlen`` blocks (remainder dropped), fixed
    order, one block per batch. Our own loader keeps llm-compressor from shuffling with the global RNG."""
    from torch.utils.data import DataLoader

    ids = torch.cat([torch.tensor(tokenizer(t)["input_ids"], dtype=torch.long) for t in texts])
    n = ids.numel() // seqlen
    if n < 1:
        raise VariantError(f"calibration: {ids.numel()} tokens make no block of seqlen {seqlen}")
    rows = [
        {"input_ids": b[None], "attention_mask": torch.ones(1, seqlen, dtype=torch.long)}
        for b in ids[: n * seqlen].view(n, seqlen)
    ]
    return DataLoader(rows, batch_size=None), n


def run_oneshot(model: torch.nn.Module, tokenizer: Any, recipe: Any, loader: Any | None) -> list[dict[str, str]]:
    """``oneshot`` on the in-memory model, quiet and writing nothing; returns the WARNING+ log records.

    The global llm-compressor session is reset afterwards, also after a failure (it holds the model and,
    after an error mid-way, unfinalized modifiers that the next call would trip over).
    """
    import_llmcompressor("llm-compressor")
    from llmcompressor import oneshot
    from llmcompressor.core import active_session

    from pplgate.protocol.progress import library_bars_off

    with contextlib.ExitStack() as stack:
        if next(model.parameters()).dtype == torch.float64:
            stack.enter_context(gptq_precision(torch.float64))
        stack.enter_context(fx_registry_cleanup())
        stack.enter_context(in_memory_model_check())
        stack.enter_context(cpu_pin_memory_noop())
        stack.enter_context(library_bars_off())
        logs = stack.enter_context(captured_logs())
        try:
            oneshot(model=model, processor=tokenizer, dataset=loader, recipe=recipe)
        finally:
            active_session().reset()
    undispatch(model)
    return logs


@torch.no_grad()
def freeze_fake_quant(model: torch.nn.Module) -> int:
    """Apply each module's weight fake-quantization once and switch it off: the same weights, bitwise, that
    compressed-tensors' forward would recompute on every call (210 small kernels per forward made a
    SmolLM2 evaluation on the H100 take 148 s instead of 1 s). Returns the number of modules frozen."""
    from compressed_tensors.quantization.lifecycle.forward import forward_quantize
    from compressed_tensors.quantization.lifecycle.helpers import disable_quantization

    n = 0
    for module in model.modules():
        scheme = getattr(module, "quantization_scheme", None)
        if scheme is None or scheme.weights is None or not getattr(module, "quantization_enabled", True):
            continue
        module.weight.data = forward_quantize(module, module.weight, "weight", scheme.weights)
        disable_quantization(module)
        n += 1
    return n


def undispatch(model: torch.nn.Module) -> None:
    """Remove the offload wrapping the sequential pipeline put on the model: a plain model on one device."""
    from compressed_tensors.offload import remove_dispatch

    remove_dispatch(model, onload_tensors=True)
    if hasattr(model, "hf_device_map"):
        del model.hf_device_map


# -- recipes ------------------------------------------------------------------------------------------
def recipe_from_list(entries: Any, where: str) -> Any:
    """``[{ModifierName: {args}}, ...]`` (a baseline's inline recipe) as llm-compressor modifiers, in order."""
    import_llmcompressor(where)
    from llmcompressor.modifiers.factory import ModifierFactory

    if not isinstance(entries, list) or not entries:
        raise VariantError(f"{where}: recipe must be a non-empty list of {{ModifierName: {{args}}}} mappings")
    if not ModifierFactory._loaded:
        ModifierFactory.refresh()
    out = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, Mapping) or len(entry) != 1:
            raise VariantError(
                f"{where}: recipe entry {i} must be a one-key mapping {{ModifierName: {{args}}}}, got {entry!r}"
            )
        ((name, args),) = entry.items()
        if args is not None and not isinstance(args, Mapping):
            raise VariantError(f"{where}: recipe entry {i} ({name}): args must be a mapping, got {args!r}")
        try:
            out.append(ModifierFactory.create(name, allow_registered=True, allow_experimental=True, **dict(args or {})))
        except Exception as exc:
            raise VariantError(f"{where}: recipe entry {i} ({name}): {type(exc).__name__}: {exc}") from exc
    return out


def recipe_from_file(path: Path, where: str) -> Any:
    """A recipe YAML file (``*_stage: *_modifiers: {Name: args}``) as a llm-compressor Recipe; never empty."""
    import yaml

    import_llmcompressor(where)
    from llmcompressor.recipe import Recipe

    try:
        yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise VariantError(f"{where}: recipe file {path} does not parse: {exc}") from exc
    try:
        recipe = Recipe.create_instance(str(path))
    except Exception as exc:
        raise VariantError(f"{where}: recipe file {path}: {type(exc).__name__}: {exc}") from exc
    if not recipe.modifiers:
        raise VariantError(
            f"{where}: recipe file {path} yields no modifiers; llm-compressor reads only the nested form "
            "'<name>_stage: {<name>_modifiers: {GPTQModifier: {...}}}' (a flat 'GPTQModifier:' at the top is ignored)"
        )
    return recipe


PRESET_GROUP_SIZES = {"W4A16": 128, "W4A16_ASYM": 128, "W8A16": -1, "W8A8": -1, "FP8": -1, "FP8_DYNAMIC": -1}


def recipe_group_sizes(value: Any) -> set[int]:
    """Every weight group size a recipe (plain data) asks for: ``group_size`` keys and preset schemes."""
    found: set[int] = set()
    if isinstance(value, Mapping):
        for k, v in value.items():
            if k == "group_size" and isinstance(v, int):
                found.add(v)
            elif k == "scheme" and isinstance(v, str) and PRESET_GROUP_SIZES.get(v.upper(), -1) > 0:
                found.add(PRESET_GROUP_SIZES[v.upper()])
            else:
                found |= recipe_group_sizes(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            found |= recipe_group_sizes(v)
    return found
