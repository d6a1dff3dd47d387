"""The one place where a measurement is wired: text -> source -> tokenizer -> tokens -> model/variant -> engine.

:class:`Measurer` holds a session's caches — the canonical text (loaded once; an error is kept and
raised again), tokenizers and their tokens per (source, tokenizer), loaded float models per (source,
dtype, device, device_map), and finished measurements per request — and turns one request (a source, a
variant kind with params, a device and the profile numbers) into a :class:`Measurement`: the
:class:`~pplgate.protocol.result.PerplexityResult` plus the protocol fingerprint a baseline records.

The pytest plugin, ``pplgate eval``, the benchmark and the CI scripts all measure through it.
"""

from __future__ import annotations

import copy
import gc
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pplgate.errors import DatasetNotFound, PplgateError, ProtocolError
from pplgate.gate.store import plain
from pplgate.models.base_cache import cacheable, load_model_cached, load_tokenizer_cached
from pplgate.models.quant_cache import QuantCache
from pplgate.models.registry import make_variant
from pplgate.models.source import ModelSource, load_model, load_tokenizer
from pplgate.models.variant import ModelContext, PreparedModel, Variant
from pplgate.protocol.compare import evaluate_comparisons
from pplgate.protocol.compare_result import ComparisonResult
from pplgate.protocol.dataset import CanonicalText, load_canonical_text
from pplgate.protocol.engine import DEFAULT_SEQLEN, evaluate_perplexity
from pplgate.protocol.result import PerplexityResult
from pplgate.protocol.tokens import TokenizedText, tokenize_canonical
from pplgate.provenance import device_layout

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


PHASES = ("load_s", "prepare_s", "tokenize_s", "evaluate_s")


def scalar_info(info: Mapping[str, Any]) -> dict[str, Any]:
    """The scalar facts of a variant's ``PreparedModel.info`` (cache key, times, kernel) for provenance."""
    return {
        k: round(v, 2) if isinstance(v, float) else v
        for k, v in info.items()
        if isinstance(v, (str, int, float, bool)) and k not in _INFO_NOT_RECORDED
    }


def _params_key(params: Mapping[str, Any]) -> str:
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


@dataclass
class Comparison:
    """One reference-vs-model pass: the comparison and both models' own measurements, from that pass."""

    result: ComparisonResult
    reference: Measurement
    model: Measurement


def fingerprint(result: PerplexityResult, tok_name: str, variant: Variant) -> dict[str, Any]:
    """The protocol fingerprint a baseline records for ``result`` of ``variant``."""
    return {
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


class Measurer:
    """Session caches (text, tokens, loaded models, measurements) and ``measure(...) -> Measurement``.

    ``dataset`` is the WikiText-2 test split's path (None: :mod:`pplgate.locate`'s lookup order), named
    ``dataset_option`` in error messages (``--dataset`` for the CLI, ``--pplgate-dataset`` under pytest).
    ``noncanonical_option`` is the caller's option that measures non-canonical text anyway (None: the
    caller has none, and a hash mismatch says what to do instead). ``missing_dataset_note``, when
    given, is appended to a :class:`~pplgate.errors.DatasetNotFound` message (the pytest plugin says
    there what happens under CI). ``cache_dir``/``cache_mode`` are the quantization cache's;
    ``progress`` shows the engine's progress on stderr.
    """

    def __init__(
        self,
        *,
        dataset: str | None = None,
        dataset_option: str = "--dataset",
        allow_noncanonical: bool = False,
        noncanonical_option: str | None = "--allow-noncanonical",
        cache_dir: str | None = None,
        cache_mode: str = "use",
        progress: bool = False,
        missing_dataset_note: str | None = None,
    ) -> None:
        self.dataset, self.dataset_option = dataset, dataset_option
        self.allow_noncanonical, self.noncanonical_option = allow_noncanonical, noncanonical_option
        self.cache_dir, self.cache_mode = cache_dir, cache_mode
        self.progress = progress
        self.missing_dataset_note = missing_dataset_note
        self._text: CanonicalText | None = None
        self._text_error: PplgateError | None = None
        self._tokens: dict[tuple[ModelSource, str | None], tuple[Any, TokenizedText, str]] = {}
        self._models: dict[tuple[ModelSource, str, str, str | None], Any] = {}
        self._prepared: dict[tuple, tuple[Variant, PreparedModel, dict[str, Any]]] = {}
        self._measurements: dict[tuple, Measurement] = {}
        self._token_info: dict[tuple[ModelSource, str | None], dict[str, Any]] = {}
        self._clock: dict[str, Any] = {"load_s": 0.0, "tokenize_s": 0.0}  # what the running request spent

    # ---- inputs, loaded once per session
    def text(self) -> CanonicalText:
        """The canonical text, looked up once (an error is kept and raised again on every call)."""
        if self._text is None and self._text_error is None:
            try:
                self._text = load_canonical_text(
                    self.dataset,
                    allow_noncanonical=self.allow_noncanonical,
                    option=self.dataset_option,
                    noncanonical_option=self.noncanonical_option,
                )
            except DatasetNotFound as exc:
                note = self.missing_dataset_note
                self._text_error = DatasetNotFound(f"{exc}\n{note}") if note else exc
            except PplgateError as exc:
                self._text_error = exc
        if self._text_error is not None:
            raise self._text_error
        assert self._text is not None
        return self._text

    def tokens(self, source: ModelSource, tokenizer: str | None) -> tuple[Any, TokenizedText, str]:
        """``(tokenizer, tokens, tokenizer_name)`` of ``source`` (or the ``tokenizer`` it names), once each."""
        key = (source, tokenizer)
        if key not in self._tokens:
            t0 = time.perf_counter()
            if tokenizer is None and cacheable(source):
                tok, info = load_tokenizer_cached(source, self._base_cache(), load=load_tokenizer)
            else:
                tok, info = load_tokenizer(source, tokenizer), {}
            tokens = tokenize_canonical(tok, self.text().text)
            self._tokens[key] = (tok, tokens, tokenizer_name(tok, source, tokenizer))
            self._token_info[key] = {**info, "tokenize_time_s": time.perf_counter() - t0}
            self._clock["tokenize_s"] += time.perf_counter() - t0
        return self._tokens[key]

    def _base_cache(self) -> QuantCache:
        """The cache of de-quantized GGUF models and tokenizers (:mod:`pplgate.models.base_cache`)."""
        return QuantCache(self.cache_dir, self.cache_mode)

    def _load(self, source: ModelSource, dtype: str, device: str, device_map: str | None) -> Any:
        if device_map is not None or not cacheable(source):  # a split (accelerate's hooks), or no GGUF to cache
            return load_model(source, dtype=dtype, device=device, device_map=device_map)
        model, info = load_model_cached(source, dtype, device, self._base_cache(), load=load_model)
        self._clock["base_cache"] = info["base_cache"]
        return model

    def model(
        self, source: ModelSource, dtype: str, device: str, *, fresh: bool = False, device_map: str | None = None
    ) -> Any:
        """The float model of ``source`` in ``dtype`` on ``device``, loaded once; ``fresh``: a private copy.

        A private copy is a deep copy of the session's model when it is loaded (the same weights), else a
        load the session does not keep (no second model in memory); a ``device_map`` split is loaded again
        (accelerate's hooks). A local GGUF is read through the base-model cache
        (:mod:`pplgate.models.base_cache`), so no load de-quantizes it twice.
        """
        key = (source, dtype, device, device_map)
        t0 = time.perf_counter()
        try:
            if fresh:  # from the session's copy, else a load the session does not keep (memory as before)
                if key in self._models and device_map is None:
                    return copy.deepcopy(self._models[key])
                return self._load(source, dtype, device, device_map)
            if key not in self._models:
                self._models[key] = self._load(source, dtype, device, device_map)
            return self._models[key]
        finally:
            self._clock["load_s"] += time.perf_counter() - t0

    # ---- the chain
    def _context(self, source: ModelSource, tok: Any, device: str, device_map: str | None) -> ModelContext:
        return ModelContext(
            source=source,
            device=device,
            tokenizer=tok,
            loader=lambda dtype, fresh=False: self.model(source, dtype, device, fresh=fresh, device_map=device_map),
            cache_dir=self.cache_dir,
            cache_mode=self.cache_mode,
            device_map=device_map,
        )

    def _prepare(
        self, source: ModelSource, variant: Variant, device: str, device_map: str | None, tok: Any
    ) -> tuple[Variant, PreparedModel, dict[str, Any]]:
        """The variant, its prepared model and what loading the float model took (``load_s``, ``base_cache``)."""
        ctx = self._context(source, tok, device, device_map)
        variant.ensure_checked(ctx)  # before any model is loaded; prepare() does not check again
        self._clock.update(load_s=0.0)
        self._clock.pop("base_cache", None)
        prepared = variant.prepare(ctx)
        loaded = {k: self._clock[k] for k in ("load_s", "base_cache") if k in self._clock}
        return variant, prepared, loaded

    def prepare(
        self,
        source: ModelSource,
        *,
        kind: str,
        params: Mapping[str, Any],
        device: str,
        tokenizer: str | None = None,
        device_map: str | None = None,
    ) -> PreparedModel:
        """The model :meth:`measure` scores for this request, for code that also hands it elsewhere (AutoAWQ's
        loop, a benchmark). The next :meth:`measure` of the same request scores this very model."""
        variant = make_variant(kind, params)  # bad params fail before any loading
        tok = self.tokens(source, tokenizer)[0]
        key = (source, tokenizer, kind, _params_key(params), device, device_map)
        self._prepared[key] = self._prepare(source, variant, device, device_map, tok)
        return self._prepared[key][1]

    def measure(
        self,
        source: ModelSource,
        *,
        kind: str,
        params: Mapping[str, Any],
        device: str,
        tokenizer: str | None = None,
        seqlen: int = DEFAULT_SEQLEN,
        batch_size: int = 1,
        max_windows: int | None = None,
        device_map: str | None = None,
        label: str | None = None,
    ) -> Measurement:
        """Measure variant ``kind(params)`` of ``source``; the same request is measured once per Measurer."""
        key = (source, tokenizer, kind, _params_key(params), device, seqlen, batch_size, max_windows, device_map)
        if key in self._measurements:
            return self._measurements[key]
        variant = make_variant(kind, params)  # bad params fail before the text, tokenizer or model load
        text = self.text()
        self._clock["tokenize_s"] = 0.0
        tok, tokens, tok_name = self.tokens(source, tokenizer)
        tokenize_s = self._clock["tokenize_s"]
        handed = self._prepared.pop((source, tokenizer, kind, _params_key(params), device, device_map), None)
        variant, prepared, loaded = handed or self._prepare(source, variant, device, device_map, tok)
        model = prepared.model
        try:
            result = evaluate_perplexity(
                model,
                tokens,
                text,
                seqlen=seqlen,
                batch_size=batch_size,
                max_windows=max_windows,
                progress=self.progress,
                label=label or f"{source.short_name()} {kind}",
            )
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
            caches = {k: v for k, v in self._token_info[(source, tokenizer)].items() if k.endswith("_cache")}
            if "base_cache" in loaded:
                caches["base_cache"] = loaded["base_cache"]
            if caches:
                extra["caches"] = caches
            if str(device).startswith("cuda") or device_map:
                extra["device_layout"] = device_layout(model)
        finally:
            model = None  # the session model cache keeps shared float models alive, nothing else
            if handed is None:
                prepared.model = None
        m = Measurement(
            result=result,
            fingerprint=fingerprint(result, tok_name, variant),
            origin=prepared.origin,
            prepare_time_s=prepared.prepare_time_s,
            extra=extra,
            phases=phases,
        )
        self._measurements[key] = m
        return m

    def compare(
        self, reference: ModelSource, source: ModelSource, *, kind: str, params: Mapping[str, Any], **kw: Any
    ) -> Comparison:
        """:meth:`compare_many` for one model: ``source``'s variant ``kind(params)`` against the reference."""
        return self.compare_many(reference, [(source, kind, params)], **kw)[0]

    def compare_many(
        self,
        reference: ModelSource,
        models: Sequence[tuple[ModelSource, str, Mapping[str, Any]]],
        *,
        reference_kind: str,
        reference_params: Mapping[str, Any] | None = None,
        device: str,
        tokenizer: str | None = None,
        seqlen: int = DEFAULT_SEQLEN,
        batch_size: int = 1,
        max_windows: int | None = None,
    ) -> list[Comparison]:
        """Each ``(source, kind, params)`` of ``models`` against ``reference``'s ``reference_kind`` on the same
        windows, all in one pass (:func:`~pplgate.protocol.compare.evaluate_comparisons`: the reference's forward
        once for all). Every model's PPL comes from that pass and is kept as this session's measurement of its
        request: a later :meth:`measure` of it reuses it. Different tokenizers are an error (one vocabulary)."""
        requests = [(reference, reference_kind, dict(reference_params or {})), *models]
        variants = [make_variant(k, p) for _, k, p in requests]  # bad params fail before anything loads
        text = self.text()
        toks = [self.tokens(src, tokenizer) for src, _, _ in requests]
        ref_tokens, ref_name = toks[0][1], toks[0][2]
        for _, tokens, name in toks[1:]:
            if tokens.tokenizer_sha256 != ref_tokens.tokenizer_sha256 or not tokens.ids.equal(ref_tokens.ids):
                raise ProtocolError(
                    f"the reference's tokenizer {ref_name} (sha256 {ref_tokens.tokenizer_sha256[:12]}) and the "
                    f"model's {name} (sha256 {tokens.tokenizer_sha256[:12]}) differ: the KL divergence compares "
                    "next-token distributions over one vocabulary on the same tokens. Compare models that share a "
                    "tokenizer, or pass --tokenizer T to use one for both (only when their vocabularies are the same)"
                )
        prepared = [
            self._prepare(src, v, device, None, tok[0])
            for (src, _, _), v, tok in zip(requests, variants, toks, strict=True)
        ]
        try:
            results = evaluate_comparisons(
                prepared[0][1].model,
                [prep.model for _, prep in prepared[1:]],
                toks[0][1],
                text,
                seqlen=seqlen,
                batch_size=batch_size,
                max_windows=max_windows,
                progress=self.progress,
                labels=[f"{src.short_name()} {k}" for src, k, _ in requests[1:]],
                reference_label=f"{reference.short_name()} {reference_kind}",
            )
        finally:
            for _, prep in prepared:
                prep.model = None  # type: ignore[assignment]
        run = (device, seqlen, batch_size, max_windows, None)  # measure()'s key after (source, tokenizer, kind, params)
        measured = [
            self._record(requests[0], prepared[0], results[0].perplexity_results()[0], toks[0][2], tokenizer, run)
        ]
        for req, prep, res, tok in zip(requests[1:], prepared[1:], results, toks[1:], strict=True):
            measured.append(self._record(req, prep, res.perplexity_results()[1], tok[2], tokenizer, run))
        return [
            Comparison(result=r, reference=measured[0], model=m) for r, m in zip(results, measured[1:], strict=True)
        ]

    def _record(
        self,
        request: tuple,
        prepared: tuple,
        result: PerplexityResult,
        tok_name: str,
        tokenizer: str | None,
        run: tuple,
    ) -> Measurement:
        """The :class:`Measurement` of ``request`` from a comparison pass, kept unless one exists already."""
        (src, kind, params), (variant, prep) = request, prepared
        m = Measurement(
            result=result,
            fingerprint=fingerprint(result, tok_name, variant),
            origin=prep.origin,
            prepare_time_s=prep.prepare_time_s,
            extra={"prepare_info": plain(scalar_info(prep.info))},
        )
        return self._measurements.setdefault((src, tokenizer, kind, _params_key(params), *run), m)

    # ---- memory
    def free(self, keep: set[tuple[ModelSource, str]]) -> None:
        """Drop loaded (and handed-over prepared) models whose ``(source, device)`` is not in ``keep``."""
        drop = [k for k in self._models if (k[0], k[2]) not in keep]
        for k in drop:
            del self._models[k]
        dropped = [k for k in self._prepared if (k[0], k[4]) not in keep]
        for k in dropped:
            del self._prepared[k]
        if drop or dropped:
            gc.collect()
            try:
                import torch

                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            except Exception:  # pragma: no cover
                pass
