"""What one measurement is: :class:`Measurement` (with its :class:`Comparison` against a reference), its
protocol fingerprint and provenance helpers. The data of :mod:`pplgate.measure` (the Measurer).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pplgate.gate.store import plain
from pplgate.models.source import ModelSource
from pplgate.models.variant import PreparedModel, Variant
from pplgate.protocol.compare_result import ComparisonResult
from pplgate.protocol.engine import DEFAULT_SEQLEN
from pplgate.protocol.result import PerplexityResult

if TYPE_CHECKING:
    from pplgate.gate.spec import EntrySpec

# keys of PreparedModel.info that are paths or machine-specific, kept out of the provenance
_INFO_NOT_RECORDED = ("load_path", "cache_entry", "calibration_source")


@dataclass
class Measurement:
    """One measured entry: the result, the protocol fingerprint, how the model was obtained."""

    result: PerplexityResult
    # dataset_sha256, n_tokens, n_windows, n_windows_total, bos_added, tokenizer_name, tokenizer_sha256,
    # seqlen, dtype, device_type and variant (the variant's own fingerprint), in the order a baseline records them
    fingerprint: dict[str, Any]
    origin: str  # loaded | quantized | cache
    prepare_time_s: float
    extra: dict[str, Any] = field(default_factory=dict)  # prepare_info, phases, caches; device_layout on CUDA
    # seconds per phase of this measurement: load (float models, incl. private copies), prepare (the variant's
    # own work: quantizing, a cache read), tokenize (tokenizer load + tokenizing; 0 when done earlier this
    # session), evaluate (the engine); see PHASES
    phases: dict[str, float] = field(default_factory=dict)
    # the comparison with the entry's reference, when it is measured as an entry of a profile that names one
    comparison: Comparison | None = None


@dataclass
class Comparison:
    """One reference-vs-model pass: the comparison and both models' own measurements, from that pass."""

    result: ComparisonResult
    reference: Measurement | None  # None: a stored reference (``stored`` names it)
    model: Measurement
    stored: dict[str, Any] | None = None  # a stored reference file's identity (name, content hash, K, dtype)
    # the model's per-module output error vs this reference (pplgate.protocol.layers.summarize), and its provenance
    # (``layers_s``; ``layers_unavailable``: why there is none)
    layers: dict[str, float] | None = None
    layers_info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ProfileRequest:
    """A profile as the Measurer needs it: the model, where and how it is scored, and its entries (any objects
    with ``name``, ``kind``, ``params`` and ``reference``: :class:`~pplgate.gate.spec.EntrySpec`)."""

    source: ModelSource
    device: str
    entries: Sequence[EntrySpec]
    tokenizer: str | None = None
    seqlen: int = DEFAULT_SEQLEN
    batch_size: int = 1
    max_windows: int | None = None
    device_map: str | None = None
    compare_group: int | None = None  # at most this many variants per comparison pass (None: one pass)


PHASES = ("load_s", "prepare_s", "tokenize_s", "evaluate_s")


def scalar_info(info: Mapping[str, Any]) -> dict[str, Any]:
    """The scalar facts of a variant's ``PreparedModel.info`` (cache key, times, kernel) for provenance."""
    return {
        k: round(v, 2) if isinstance(v, float) else v
        for k, v in info.items()
        if isinstance(v, (str, int, float, bool)) and k not in _INFO_NOT_RECORDED
    }


def params_key(params: Mapping[str, Any]) -> str:
    return json.dumps(plain(params), sort_keys=True, default=str)


def tokenizer_name(tok: Any, source: ModelSource, tokenizer: str | None) -> str:
    """The tokenizer's class and where it comes from, without machine paths: a moved directory is no drift.

    A hub id is kept, a GGUF by its file name; any other local path reads ``local`` (its content is in
    ``tokenizer_sha256``).
    """
    if tokenizer:
        ref = "local" if Path(tokenizer).expanduser().exists() else tokenizer
    elif source.gguf_file:
        ref = source.gguf_file
    else:
        ref = "local" if Path(source.path_or_id).expanduser().exists() else source.path_or_id
    return f"{type(tok).__name__}({ref})"


def fingerprint(
    result: PerplexityResult, tok_name: str, variant: Variant, info: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The protocol fingerprint a baseline records for ``result`` of ``variant``; with the variant's
    ``coverage`` (what it quantized, from its prepare ``info``) when the kind reports one."""
    fp = {
        "dataset_sha256": result.dataset_sha256,
        "n_tokens": result.n_tokens,
        "n_windows": result.n_windows,
        "n_windows_total": result.n_windows_total,
        "bos_added": result.bos_added,
        "tokenizer_name": tok_name,
        "tokenizer_sha256": result.tokenizer_sha256,
        "seqlen": result.seqlen,
        "dtype": result.dtype,
        "device_type": str(result.device).split(":")[0],
        "variant": plain(variant.fingerprint()),
    }
    if info and isinstance(info.get("coverage"), str):
        fp["coverage"] = info["coverage"]
    return fp


def provenance(
    result: PerplexityResult,
    prepared: PreparedModel,
    loaded: Mapping[str, Any],
    tokenize_s: float,
    token_info: Mapping[str, Any],
    layout: Any = None,
) -> tuple[dict[str, float], dict[str, Any]]:
    """``(phases, extra)`` of one measurement: seconds per phase and what the provenance records beside
    them (prepare_info, rounded phases, the caches that served it, the device layout on CUDA, the pass's
    wall time when the result comes from a shared comparison pass)."""
    load_s = loaded.get("load_s", 0.0)
    phases = {
        "load_s": load_s,
        "prepare_s": max(prepared.prepare_time_s - load_s, 0.0),
        "tokenize_s": tokenize_s,
        "evaluate_s": result.wall_time_s,
    }
    extra: dict[str, Any] = {
        "prepare_info": plain(scalar_info(prepared.info)),
        "phases": {k: round(v, 2) for k, v in phases.items()},
    }
    caches = {k: v for k, v in token_info.items() if k.endswith("_cache")}
    if "base_cache" in loaded:
        caches["base_cache"] = loaded["base_cache"]
    if caches:
        extra["caches"] = caches
    if layout is not None:
        extra["device_layout"] = layout
    if "pass_wall_time_s" in result.extra:  # evaluate_s is this model's own forwards; the pass took this long
        extra["pass_wall_time_s"] = round(result.extra["pass_wall_time_s"], 2)
    return phases, extra
