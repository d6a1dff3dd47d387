"""The Measurer's comparison pass: a reference and several variants scored on the same windows at once.

:func:`compare_many` prepares every model through the :class:`~pplgate.measure.Measurer` (its caches),
runs :func:`pplgate.protocol.compare.evaluate_comparisons` (the reference's forward once for all) and
keeps every model's PPL from that pass as the session's measurement of its request, so a later
``measure()`` of it scores nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pplgate.errors import ProtocolError
from pplgate.measurement import Measurement, _params_key, fingerprint, provenance
from pplgate.models.registry import make_variant
from pplgate.models.source import ModelSource
from pplgate.protocol.compare import evaluate_comparisons
from pplgate.protocol.compare_result import ComparisonResult
from pplgate.protocol.engine import DEFAULT_SEQLEN
from pplgate.protocol.result import PerplexityResult
from pplgate.provenance import device_layout


@dataclass
class Comparison:
    """One reference-vs-model pass: the comparison and both models' own measurements, from that pass."""

    result: ComparisonResult
    reference: Measurement
    model: Measurement


def compare_many(
    measurer: Any,  # pplgate.measure.Measurer (not imported: it imports this module)
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
    windows, in one pass. Different tokenizers are an error (one vocabulary)."""
    requests = [(reference, reference_kind, dict(reference_params or {})), *models]
    variants = [make_variant(k, p) for _, k, p in requests]  # bad params fail before anything loads
    text = measurer.text()
    toks, tokenize_s = [], []
    for src, _, _ in requests:  # the Measurer's clock: the first request of a source tokenizes, the rest reuse (0)
        measurer._clock["tokenize_s"] = 0.0
        toks.append(measurer.tokens(src, tokenizer))
        tokenize_s.append(measurer._clock["tokenize_s"])
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
        measurer._prepare(src, v, device, None, tok[0])
        for (src, _, _), v, tok in zip(requests, variants, toks, strict=True)
    ]
    on_gpu = str(device).startswith("cuda")
    layouts = [device_layout(prep.model) if on_gpu else None for _, prep, _ in prepared]
    try:
        results = evaluate_comparisons(
            prepared[0][1].model,
            [prep.model for _, prep, _ in prepared[1:]],
            toks[0][1],
            text,
            seqlen=seqlen,
            batch_size=batch_size,
            max_windows=max_windows,
            progress=measurer.progress,
            labels=[f"{src.short_name()} {k}" for src, k, _ in requests[1:]],
            reference_label=f"{reference.short_name()} {reference_kind}",
        )
    finally:
        for _, prep, _ in prepared:
            prep.model = None  # type: ignore[assignment]
    run = (device, seqlen, batch_size, max_windows, None)  # measure()'s key after (source, tokenizer, kind, params)
    ref_result = results[0].perplexity_results()[0]
    own = [ref_result, *(res.perplexity_results()[1] for res in results)]
    measured = [
        _record(measurer, req, prep, res, tok[2], tokenizer, run, tok_s, layout)
        for req, prep, res, tok, tok_s, layout in zip(requests, prepared, own, toks, tokenize_s, layouts, strict=True)
    ]
    return [Comparison(result=r, reference=measured[0], model=m) for r, m in zip(results, measured[1:], strict=True)]


def _record(
    measurer: Any,  # pplgate.measure.Measurer (not imported: it imports this module)
    request: tuple,
    prepared: tuple,
    result: PerplexityResult,
    tok_name: str,
    tokenizer: str | None,
    run: tuple,
    tokenize_s: float,
    layout: Any,
) -> Measurement:
    """The :class:`Measurement` of ``request`` from a comparison pass, kept unless one exists already."""
    (src, kind, params), (variant, prep, loaded) = request, prepared
    token_info = measurer._token_info.get((src, tokenizer), {})
    phases, extra = provenance(result, prep, loaded, tokenize_s, token_info, layout)
    m = Measurement(
        result=result,
        fingerprint=fingerprint(result, tok_name, variant, prep.info),
        origin=prep.origin,
        prepare_time_s=prep.prepare_time_s,
        extra=extra,
        phases=phases,
    )
    return measurer._measurements.setdefault((src, tokenizer, kind, _params_key(params), *run), m)
