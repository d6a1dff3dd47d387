"""The one place where a measurement is wired: text -> source -> tokenizer -> tokens -> model/variant -> engine.

:class:`Measurer` turns a request (a source, a variant kind with params, a device, the profile numbers) into a
:class:`Measurement` (the result, the protocol fingerprint, the provenance), once per request per session, over
the session's :class:`~pplgate.inputs.Inputs`; :func:`pplgate.profile.measure_profile` measures a profile (the
gate's unit) through it. The plugin, the CLI, the benchmarks and CI scripts all measure through it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pplgate.errors import ProtocolError
from pplgate.gate.layers import LAYER_TOKENS
from pplgate.gate.store import plain
from pplgate.inputs import Inputs, release_memory
from pplgate.measurement import (
    PHASES,
    Comparison,
    Measurement,
    ProfileRequest,
    fingerprint,
    params_key,
    provenance,
    scalar_info,
    tokenizer_name,
)
from pplgate.models.registry import make_variant
from pplgate.models.source import ModelSource
from pplgate.models.variant import ModelContext, PreparedModel, Variant
from pplgate.protocol.compare import evaluate_comparisons
from pplgate.protocol.dataset import CanonicalText
from pplgate.protocol.engine import DEFAULT_SEQLEN, evaluate_perplexity
from pplgate.protocol.reference_file import StoredReference
from pplgate.protocol.stored_compare import compare_to_reference
from pplgate.protocol.tokens import TokenizedText
from pplgate.provenance import device_layout

if TYPE_CHECKING:
    pass

__all__ = [
    "PHASES", "Comparison", "Measurement", "Measurer", "ProfileRequest", "fingerprint", "plain", "scalar_info",
    "tokenizer_name",
]  # fmt: skip


class Measurer:
    """``measure(...) -> Measurement`` (and :meth:`compare_many`, :meth:`compare_file`) over session caches.

    ``dataset`` is the WikiText-2 test split's path (None: :mod:`pplgate.locate`'s lookup order), named
    ``dataset_option`` in error messages (``--dataset`` for the CLI, ``--pplgate-dataset`` under pytest).
    ``noncanonical_option``: the caller's option that measures non-canonical text anyway (None: it has none).
    ``missing_dataset_note`` is appended to a :class:`~pplgate.errors.DatasetNotFound` message (the pytest
    plugin says there what happens under CI). ``cache_dir``/``cache_mode``: the quantization cache's;
    ``progress`` shows the engine's progress on stderr."""

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
        self.dataset, self.cache_dir, self.cache_mode, self.progress = dataset, cache_dir, cache_mode, progress
        self.inputs = Inputs(
            dataset=dataset,
            dataset_option=dataset_option,
            allow_noncanonical=allow_noncanonical,
            noncanonical_option=noncanonical_option,
            cache_dir=cache_dir,
            cache_mode=cache_mode,
            missing_dataset_note=missing_dataset_note,
        )
        self._prepared: dict[tuple, tuple[Variant, PreparedModel, dict[str, Any]]] = {}
        self._measurements: dict[tuple, Measurement] = {}

    # ---- inputs, loaded once per session (pplgate.inputs)
    def text(self) -> CanonicalText:
        """The canonical text, looked up once (an error is kept and raised again on every call)."""
        return self.inputs.text()

    def tokens(self, source: ModelSource, tokenizer: str | None) -> tuple[Any, TokenizedText, str]:
        """``(tokenizer, tokens, tokenizer_name)`` of ``source`` (or the ``tokenizer`` it names), once each."""
        return self.inputs.tokens(source, tokenizer)[0]

    def model(
        self, source: ModelSource, dtype: str, device: str, *, fresh: bool = False, device_map: str | None = None
    ) -> Any:
        """The float model of ``source`` (:meth:`pplgate.inputs.Inputs.model`); ``fresh``: a private copy."""
        return self.inputs.model(source, dtype, device, fresh=fresh, device_map=device_map)[0]

    def changed_models(self) -> list[str]:
        """The session's float models whose weights changed since they were loaded (a test that modified one
        in place): dropped, with what was prepared from them, so that the next use loads them again."""
        changed = self.inputs.changed_models()
        for _, model in changed:
            for k in [k for k, v in self._prepared.items() if v[1].model is model]:
                del self._prepared[k]
        return [what for what, _ in changed]

    # ---- the chain
    def _prepare(
        self, source: ModelSource, variant: Variant, device: str, device_map: str | None, tok: Any
    ) -> tuple[Variant, PreparedModel, dict[str, Any]]:
        """The variant, its prepared model and what loading float models took (``load_s``, ``base_cache``)."""
        loaded: dict[str, Any] = {"load_s": 0.0}

        def loader(dtype: str, fresh: bool = False) -> Any:
            t0 = time.perf_counter()
            model, info = self.inputs.model(source, dtype, device, fresh=fresh, device_map=device_map)
            loaded["load_s"] += time.perf_counter() - t0
            loaded.update(info)
            return model

        ctx = ModelContext(
            source=source,
            device=device,
            tokenizer=tok,
            loader=loader,
            cache_dir=self.cache_dir,
            cache_mode=self.cache_mode,
            device_map=device_map,
            config_loader=lambda: self.inputs.config(source),
            holder=lambda dtype: self.inputs.held(source, dtype, device, device_map),
        )
        variant.ensure_checked(ctx)  # before any model is loaded; prepare() does not check again
        return variant, variant.prepare(ctx), loaded

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
        key = (source, tokenizer, kind, params_key(params), device, device_map)
        self._prepared[key] = self._prepare(source, variant, device, device_map, tok)
        return self._prepared[key][1]

    def _measurement(
        self, source: ModelSource, tokenizer: str | None, result: Any, prepared: tuple, tokens: tuple, layout: Any
    ) -> Measurement:
        """A scored model's :class:`Measurement` (``prepared``: ``_prepare``'s; ``tokens``: (name, seconds))."""
        (variant, prep, loaded), (tok_name, tokenize_s) = prepared, tokens
        phases, extra = provenance(result, prep, loaded, tokenize_s, self.inputs.token_info(source, tokenizer), layout)
        return Measurement(
            result=result,
            fingerprint=fingerprint(result, tok_name, variant, prep.info),
            origin=prep.origin,
            prepare_time_s=prep.prepare_time_s,
            extra=extra,
            phases=phases,
        )

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
        key = (source, tokenizer, kind, params_key(params), device, seqlen, batch_size, max_windows, device_map)
        if key in self._measurements:
            return self._measurements[key]
        variant = make_variant(kind, params)  # bad params fail before the text, tokenizer or model load
        text = self.text()
        (tok, tokens, tok_name), tokenize_s = self.inputs.tokens(source, tokenizer)
        handed = self._prepared.pop((source, tokenizer, kind, params_key(params), device, device_map), None)
        prepared = handed or self._prepare(source, variant, device, device_map, tok)
        prep = prepared[1]
        try:
            result = evaluate_perplexity(
                prep.model,
                tokens,
                text,
                seqlen=seqlen,
                batch_size=batch_size,
                max_windows=max_windows,
                progress=self.progress,
                label=label or f"{source.short_name()} {kind}",
            )
            layout = device_layout(prep.model) if str(device).startswith("cuda") or device_map else None
            m = self._measurement(source, tokenizer, result, prepared, (tok_name, tokenize_s), layout)
        finally:
            if handed is None:  # the session model cache keeps shared float models alive, nothing else
                prep.model = None
        self._measurements[key] = m
        return m

    # ---- comparisons: a reference and several variants scored on the same windows at once
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
        windows, in one pass (the reference's forward once for all). Each model's PPL from that pass is kept as
        the session's measurement of its request. Different tokenizers are an error (one vocabulary)."""
        requests = [(reference, reference_kind, dict(reference_params or {})), *models]
        variants = [make_variant(k, p) for _, k, p in requests]  # bad params fail before anything loads
        text = self.text()
        toks = [self.inputs.tokens(src, tokenizer) for src, _, _ in requests]  # the first of a source tokenizes
        (_, ref_tokens, ref_name), _ = toks[0]
        for (_, tokens, name), _ in toks[1:]:
            if tokens.tokenizer_sha256 != ref_tokens.tokenizer_sha256 or not tokens.ids.equal(ref_tokens.ids):
                raise ProtocolError(
                    f"the reference's tokenizer {ref_name} (sha256 {ref_tokens.tokenizer_sha256[:12]}) and the "
                    f"model's {name} (sha256 {tokens.tokenizer_sha256[:12]}) differ: the KL divergence compares "
                    "next-token distributions over one vocabulary on the same tokens. Compare models that share a "
                    "tokenizer, or pass --tokenizer T to use one for both (only when their vocabularies are the same)"
                )
        prepared = [
            self._prepare(src, v, device, None, tok[0][0])
            for (src, _, _), v, tok in zip(requests, variants, toks, strict=True)
        ]
        on_gpu = str(device).startswith("cuda")
        layouts = [device_layout(prep.model) if on_gpu else None for _, prep, _ in prepared]
        try:
            results = evaluate_comparisons(
                prepared[0][1].model,
                [prep.model for _, prep, _ in prepared[1:]],
                ref_tokens,
                text,
                seqlen=seqlen,
                batch_size=batch_size,
                max_windows=max_windows,
                progress=self.progress,
                labels=[f"{src.short_name()} {k}" for src, k, _ in requests[1:]],
                reference_label=f"{reference.short_name()} {reference_kind}",
            )
            profiles = [_layers(prepared[0][1].model, prep.model, ref_tokens.ids) for _, prep, _ in prepared[1:]]
        finally:
            for _, prep, _ in prepared:
                prep.model = None  # type: ignore[assignment]
        own = [results[0].perplexity_results()[0], *(res.perplexity_results()[1] for res in results)]
        measured = []
        for (src, kind, params), prep, res, ((_, _, name), tok_s), layout in zip(
            requests, prepared, own, toks, layouts, strict=True
        ):
            m = self._measurement(src, tokenizer, res, prep, (name, tok_s), layout)
            key = (src, tokenizer, kind, params_key(params), device, seqlen, batch_size, max_windows, None)
            measured.append(self._measurements.setdefault(key, m))  # unless measured already
        return [
            Comparison(result=r, reference=measured[0], model=m, layers=p[0], layers_info=p[1])
            for r, m, p in zip(results, measured[1:], profiles, strict=True)
        ]

    def compare_file(
        self,
        path: str,
        source: ModelSource,
        *,
        kind: str,
        params: Mapping[str, Any],
        device: str,
        tokenizer: str | None = None,
        seqlen: int = DEFAULT_SEQLEN,
        batch_size: int = 1,
        max_windows: int | None = None,
        label: str | None = None,
    ) -> Comparison:
        """``source``'s variant ``kind(params)`` against the stored reference at ``path`` (``pplgate reference
        save``): one pass of the model, the reference never loaded. The file's protocol (dataset, tokenizer, seqlen,
        windows) must be this run's; ``max_windows`` None: the file must hold every window."""
        stored = StoredReference(path)  # format, size and content hash: before any model loads
        variant = make_variant(kind, params)
        text = self.text()
        (tok, tokens, tok_name), tokenize_s = self.inputs.tokens(source, tokenizer)
        actual = {"dataset_sha256": text.sha256, "tokenizer_sha256": tokens.tokenizer_sha256, "seqlen": seqlen}
        stored.check_fingerprint({**actual, "bos_added": tokens.bos_added}, where="this run")
        n_total = len(tokens.ids) // seqlen
        if stored.n_windows != (max_windows or n_total):
            raise ProtocolError(
                f"reference file {path} holds {stored.n_windows} windows, this run scores {max_windows or n_total}: "
                f"save it with --max-windows {max_windows or n_total} (`pplgate reference save`)"
            )
        prepared = self._prepare(source, variant, device, None, tok)
        try:
            label = label or f"{source.short_name()} {kind}"
            result = compare_to_reference(
                stored, prepared[1].model, tokens, text, batch_size=batch_size, progress=self.progress, label=label
            )
            layout = device_layout(prepared[1].model) if str(device).startswith("cuda") else None
        finally:
            prepared[1].model = None  # type: ignore[assignment]
        own = result.perplexity_results()[1]
        m = self._measurement(source, tokenizer, own, prepared, (tok_name, tokenize_s), layout)
        m.extra["reference_file"] = result.extra["reference_file"]  # the KLD's kind: a bound or an estimate
        keys = ("content_sha256", "reference_variant", "dtype_reference", "top_k", "tail_samples")
        identity = {"file": Path(path).name, **{k: stored.meta.get(k) for k in keys if k in stored.meta}}
        return Comparison(result=result, reference=None, model=m, stored=identity)

    # ---- memory
    def free(self, keep: set[tuple[ModelSource, str]]) -> None:
        """Drop loaded (and handed-over prepared) models whose ``(source, device)`` is not in ``keep``."""
        dropped = [k for k in self._prepared if (k[0], k[4]) not in keep]
        for k in dropped:
            del self._prepared[k]
        if self.inputs.free(keep) or dropped:
            release_memory()


def _layers(reference: Any, model: Any, ids: Any) -> tuple[dict[str, float] | None, dict[str, Any]]:
    """``model``'s per-module output error vs ``reference`` (:func:`pplgate.protocol.layers.layer_profile`,
    summarized) on the first :data:`LAYER_TOKENS` tokens, and its provenance: ``layers_s`` (its wall time)
    and, where there is no profile, ``layers_unavailable`` (why). Never fails the measurement."""
    from pplgate.protocol.layers import layer_profile, summarize

    try:
        device = next(reference.parameters()).device
        prof = layer_profile(reference, model, ids[:LAYER_TOKENS].reshape(1, -1).to(device))
    except Exception as exc:  # a layout the profile cannot run on: recorded, never raised
        return None, {"layers_unavailable": f"{type(exc).__name__}: {exc}"[:300]}
    info: dict[str, Any] = {"layers_s": round(prof.time_s, 3)}
    if all(math.isnan(x) for x in prof.errors.values()):
        why = next(iter(prof.unmeasured.items()), None)
        info["layers_unavailable"] = (
            f"no module measured ({len(prof.unmeasured)} unmeasured, e.g. {why[0]}: {why[1]})"
            if why
            else "no decoder-layer module found (a layout without named decoder layers: layers.N / h.N / blocks.N)"
        )
        return None, info
    return summarize(prof.errors), info
