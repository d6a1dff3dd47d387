"""The one place where a measurement is wired: text -> source -> tokenizer -> tokens -> model/variant -> engine.

:class:`Measurer` holds a session's caches — the canonical text (loaded once; an error is kept and
raised again), tokenizers and their tokens per (source, tokenizer), configs per source, loaded float
models per (source,
dtype, device, device_map), and finished measurements per request — and turns one request (a source, a
variant kind with params, a device and the profile numbers) into a :class:`Measurement`: the
:class:`~pplgate.protocol.result.PerplexityResult` plus the protocol fingerprint a baseline records.

The pytest plugin, ``pplgate eval``, the benchmark and the CI scripts all measure through it.
"""

from __future__ import annotations

import copy
import gc
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pplgate.errors import DatasetNotFound, PplgateError
from pplgate.gate.store import plain
from pplgate.models.base_cache import cacheable, load_config_cached, load_model_cached, load_tokenizer_cached
from pplgate.models.quant_cache import QuantCache
from pplgate.models.registry import make_variant
from pplgate.models.source import ModelSource, load_model, load_tokenizer
from pplgate.models.token_cache import tokenize_cached
from pplgate.models.variant import ModelContext, PreparedModel, Variant
from pplgate.protocol.dataset import CanonicalText, load_canonical_text
from pplgate.protocol.engine import DEFAULT_SEQLEN, evaluate_perplexity
from pplgate.protocol.tokens import TokenizedText
from pplgate.provenance import device_layout

if TYPE_CHECKING:
    from pplgate.comparing import Comparison

from pplgate.measurement import (  # noqa: E402 - re-exported: pplgate.measure.Measurement etc.
    PHASES,
    Measurement,
    _params_key,
    fingerprint,
    provenance,
    scalar_info,
    tokenizer_name,
)

__all__ = ["PHASES", "Measurement", "Measurer", "fingerprint", "plain", "scalar_info", "tokenizer_name"]


def weights_digest(model: Any) -> tuple[float, float]:
    """A cheap fingerprint of a model's weights (float64 sum and sum of squares of every parameter): any in-place
    change of a weight moves it (a permutation of equal values would not; no test does that by accident)."""
    import torch

    with torch.no_grad():
        total = squares = 0.0
        for p in model.parameters():  # accumulated in float64 without a float64 copy of the weights
            total += float(torch.sum(p.detach(), dtype=torch.float64))
            squares += float(torch.linalg.vector_norm(p.detach(), dtype=torch.float64)) ** 2
    return total, squares


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
        self._digests: dict[tuple[ModelSource, str, str, str | None], tuple[float, float]] = {}
        self._prepared: dict[tuple, tuple[Variant, PreparedModel, dict[str, Any]]] = {}
        self._measurements: dict[tuple, Measurement] = {}
        self._token_info: dict[tuple[ModelSource, str | None], dict[str, Any]] = {}
        self._configs: dict[ModelSource, Any] = {}
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
            tokens, token_info = tokenize_cached(tok, self.text(), self._base_cache())
            self._tokens[key] = (tok, tokens, tokenizer_name(tok, source, tokenizer))
            self._token_info[key] = {**info, **token_info, "tokenize_time_s": time.perf_counter() - t0}
            self._clock["tokenize_s"] += time.perf_counter() - t0
        return self._tokens[key]

    def config(self, source: ModelSource) -> Any:
        """``source``'s ``PretrainedConfig`` without weights, read once per session (a GGUF's through the cache)."""
        if source not in self._configs:
            self._configs[source] = load_config_cached(source, self._base_cache())[0]
        return self._configs[source]

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
                self._digests[key] = weights_digest(self._models[key])
            return self._models[key]
        finally:
            self._clock["load_s"] += time.perf_counter() - t0

    def changed_models(self) -> list[str]:
        """The session's float models whose weights changed since they were loaded (a test that modified one
        in place): dropped, with what was prepared from them, so that the next use loads them again."""
        out = []
        for key, model in list(self._models.items()):
            if key in self._digests and weights_digest(model) != self._digests[key]:
                del self._models[key], self._digests[key]
                for k in [k for k, v in self._prepared.items() if v[1].model is model]:
                    del self._prepared[k]
                out.append(f"{key[0].describe()} ({key[1]} on {key[2]})")
        return out

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
            config_loader=lambda: self.config(source),
            holder=lambda dtype: self._models.get((source, dtype, device, device_map)),
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
            on_gpu = str(device).startswith("cuda") or device_map
            layout = device_layout(model) if on_gpu else None
            phases, extra = provenance(
                result, prepared, loaded, tokenize_s, self._token_info[(source, tokenizer)], layout
            )
        finally:
            model = None  # the session model cache keeps shared float models alive, nothing else
            if handed is None:
                prepared.model = None
        m = Measurement(
            result=result,
            fingerprint=fingerprint(result, tok_name, variant, prepared.info),
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
        self, reference: ModelSource, models: Sequence[tuple[ModelSource, str, Mapping[str, Any]]], **kw: Any
    ) -> list[Comparison]:
        """Each ``(source, kind, params)`` against ``reference``, one pass: :func:`pplgate.comparing.compare_many`."""
        from pplgate.comparing import compare_many

        return compare_many(self, reference, models, **kw)

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
