"""What every measurement reads, loaded once per session: the canonical text, tokenizers and their tokens, model
configs and float models (:class:`Inputs`, the :class:`~pplgate.measure.Measurer`'s caches)."""

from __future__ import annotations

import copy
import gc
import time
from typing import Any

from pplgate.errors import DatasetNotFound, PplgateError
from pplgate.measurement import tokenizer_name
from pplgate.models.base_cache import cacheable, load_config_cached, load_model_cached, load_tokenizer_cached
from pplgate.models.quant_cache import QuantCache
from pplgate.models.source import ModelSource, load_model, load_tokenizer
from pplgate.models.token_cache import tokenize_cached
from pplgate.protocol.dataset import CanonicalText, load_canonical_text
from pplgate.protocol.tokens import TokenizedText

ModelKey = tuple[ModelSource, str, str, "str | None"]  # (source, dtype, device, device_map)


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


class Inputs:
    """The session's text, tokens, configs and float models (see :class:`~pplgate.measure.Measurer` for the
    arguments). Each method returns what it spent or which cache served it: nothing is kept on a clock."""

    def __init__(
        self,
        *,
        dataset: str | None,
        dataset_option: str,
        allow_noncanonical: bool,
        noncanonical_option: str | None,
        cache_dir: str | None,
        cache_mode: str,
        missing_dataset_note: str | None,
    ) -> None:
        self.dataset, self.dataset_option = dataset, dataset_option
        self.allow_noncanonical, self.noncanonical_option = allow_noncanonical, noncanonical_option
        self.cache_dir, self.cache_mode = cache_dir, cache_mode
        self.missing_dataset_note = missing_dataset_note
        self._text: CanonicalText | None = None
        self._text_error: PplgateError | None = None
        self._tokens: dict[tuple[ModelSource, str | None], tuple[Any, TokenizedText, str]] = {}
        self._token_info: dict[tuple[ModelSource, str | None], dict[str, Any]] = {}
        self._configs: dict[ModelSource, Any] = {}
        self._models: dict[ModelKey, Any] = {}
        self._digests: dict[ModelKey, tuple[float, float]] = {}

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

    def tokens(self, source: ModelSource, tokenizer: str | None) -> tuple[tuple[Any, TokenizedText, str], float]:
        """``((tokenizer, tokens, tokenizer_name), seconds)`` of ``source`` (or the ``tokenizer`` it names), made
        once: the seconds this call spent on them (0.0 when made earlier this session)."""
        key = (source, tokenizer)
        if key in self._tokens:
            return self._tokens[key], 0.0
        t0 = time.perf_counter()
        if tokenizer is None and cacheable(source):
            tok, info = load_tokenizer_cached(source, self._base_cache(), load=load_tokenizer)
        else:
            tok, info = load_tokenizer(source, tokenizer), {}
        tokens, token_info = tokenize_cached(tok, self.text(), self._base_cache())
        spent = time.perf_counter() - t0
        self._tokens[key] = (tok, tokens, tokenizer_name(tok, source, tokenizer))
        self._token_info[key] = {**info, **token_info, "tokenize_time_s": spent}
        return self._tokens[key], spent

    def token_info(self, source: ModelSource, tokenizer: str | None) -> dict[str, Any]:
        """Which caches served the tokenizer and tokens of ``source`` (and the time they took)."""
        return self._token_info.get((source, tokenizer), {})

    def config(self, source: ModelSource) -> Any:
        """``source``'s ``PretrainedConfig`` without weights, read once per session (a GGUF's through the cache)."""
        if source not in self._configs:
            self._configs[source] = load_config_cached(source, self._base_cache())[0]
        return self._configs[source]

    def _base_cache(self) -> QuantCache:
        """The cache of de-quantized GGUF models and tokenizers (:mod:`pplgate.models.base_cache`)."""
        return QuantCache(self.cache_dir, self.cache_mode)

    def _load(self, source: ModelSource, dtype: str, device: str, device_map: str | None) -> tuple[Any, dict]:
        """A load the session does not keep, and which cache served it (``{"base_cache": ...}`` or ``{}``)."""
        if device_map is not None or not cacheable(source):  # a split (accelerate's hooks), or no GGUF to cache
            return load_model(source, dtype=dtype, device=device, device_map=device_map), {}
        model, info = load_model_cached(source, dtype, device, self._base_cache(), load=load_model)
        return model, {"base_cache": info["base_cache"]}

    def model(
        self, source: ModelSource, dtype: str, device: str, *, fresh: bool = False, device_map: str | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """``(model, served)``: the float model of ``source`` in ``dtype`` on ``device``, loaded once (``fresh``: a
        private copy), and which cache served a load this call made (``{}`` when none).

        A private copy is a deep copy of the session's model when it is loaded (the same weights), else a
        load the session does not keep (no second model in memory); a ``device_map`` split is loaded again
        (accelerate's hooks). A local GGUF is read through the base-model cache
        (:mod:`pplgate.models.base_cache`), so no load de-quantizes it twice.
        """
        key = (source, dtype, device, device_map)
        if fresh:
            if key in self._models and device_map is None:
                return copy.deepcopy(self._models[key]), {}
            return self._load(source, dtype, device, device_map)
        served: dict[str, Any] = {}
        if key not in self._models:
            self._models[key], served = self._load(source, dtype, device, device_map)
            self._digests[key] = weights_digest(self._models[key])
        return self._models[key], served

    def held(self, source: ModelSource, dtype: str, device: str, device_map: str | None) -> Any:
        """The session's float model of that key when it is loaded, else None (nothing is loaded)."""
        return self._models.get((source, dtype, device, device_map))

    def changed_models(self) -> list[tuple[str, Any]]:
        """``(description, model)`` of the float models whose weights changed since they were loaded (a test that
        modified one in place): dropped, so that the next use loads them again."""
        out = []
        for key, model in list(self._models.items()):
            if key in self._digests and weights_digest(model) != self._digests[key]:
                del self._models[key], self._digests[key]
                out.append((f"{key[0].describe()} ({key[1]} on {key[2]})", model))
        return out

    def free(self, keep: set[tuple[ModelSource, str]]) -> bool:
        """Drop the float models whose ``(source, device)`` is not in ``keep``; whether any was dropped."""
        drop = [k for k in self._models if (k[0], k[2]) not in keep]
        for k in drop:
            del self._models[k]
            self._digests.pop(k, None)
        return bool(drop)


def release_memory() -> None:
    """Collect garbage, and give CUDA's cached blocks back when there are any."""
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # pragma: no cover
        pass
