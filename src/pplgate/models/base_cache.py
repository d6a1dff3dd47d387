"""On-disk cache of loaded base models and tokenizers of GGUF sources: de-quantize once, load at disk speed after.

Loading a GGUF model de-quantizes every tensor on the CPU (~12 s for SmolLM2-135M, minutes for 7B) and
reading its tokenizer parses the GGUF metadata (~7 s for SmolLM2). This module stores the result once, in
the :class:`~pplgate.models.quant_cache.QuantCache` (same root, same atomic writes, manifest, sha256
verification, locks and modes; ``pplgate cache list|clear`` shows and removes these entries too):

* a **base model** entry per (GGUF content, dtype, library versions): ``config.json`` (the config as loaded
  from the GGUF) and ``model.safetensors`` (the de-quantized weights in that dtype, tied weights once).
  Loading it with ``from_pretrained`` gives bit-identical tensors, hence bit-identical logits and PPL.
  The build reads the entry back before it is kept and compares every parameter and buffer (the
  non-persistent ones included, e.g. rotary frequencies) with the GGUF-loaded model; a model that does
  not round-trip is not cached (a :class:`~pplgate.errors.CacheWarning` says why) and is de-quantized
  from the GGUF in every session;
* a **tokenizer** entry per (GGUF content, library versions): ``save_pretrained``'s files. The build
  re-loads them and compares class, :func:`~pplgate.protocol.tokens.tokenizer_fingerprint` and the
  encoding of a probe text with the GGUF tokenizer; a tokenizer that does not round-trip is not cached
  (a :class:`~pplgate.errors.CacheWarning` says so) and is read from the GGUF every time.

Only local GGUF sources are cached: a safetensors directory or hub model already loads at disk speed.
A corrupt entry is reported (``CacheWarning``), removed and rebuilt, as for quantized models.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from pplgate.errors import CacheWarning, ModelLoadError
from pplgate.models.hashing import library_versions, source_fingerprint
from pplgate.models.layers import load_config
from pplgate.models.quant_cache import CacheEntry, QuantCache, cache_key
from pplgate.models.source import ModelSource, load_model, load_tokenizer, resolve_device, torch_dtype
from pplgate.protocol.progress import library_bars_off
from pplgate.protocol.tokens import tokenizer_fingerprint

BASE_CACHE_FORMAT = 1
# what decides the de-quantized tensors and how they are read back
VERSIONS_KEYED = ("torch", "transformers", "gguf", "safetensors", "tokenizers")
WEIGHTS = "model.safetensors"
TOKENIZER_DIR = "tokenizer"
# encoded with both tokenizers at build time: a round trip that changes the encoding is not cached
_PROBE = " = Robert Boulter = \n\n Robert Boulter is an English film , television and theatre actor . 1 2 é ü 中文"


def cacheable(source: ModelSource) -> bool:
    """Whether ``source`` is a local GGUF file (the only kind of source this cache stores)."""
    return bool(source.gguf_file) and (Path(source.path_or_id).expanduser() / source.gguf_file).is_file()


def key_parts(source: ModelSource, what: str, dtype: str | None = None) -> dict[str, Any]:
    """The content that names an entry: format, what (``base-model``/``tokenizer``), GGUF sha256, dtype, versions."""
    parts: dict[str, Any] = {
        "format": BASE_CACHE_FORMAT,
        "type": what,
        "source": source_fingerprint(source),
        "versions": library_versions(*VERSIONS_KEYED),
    }
    if dtype is not None:
        parts["dtype"] = dtype
    return parts


def _restore_name(obj: Any, name: str | None) -> None:
    """Give a model or tokenizer read from the cache the name it had when read from the GGUF (not a cache path)."""
    if name is None:
        return
    config = getattr(obj, "config", None)
    if config is not None:
        config._name_or_path = name
    if hasattr(obj, "name_or_path"):
        obj.name_or_path = name


def load_model_cached(
    source: ModelSource,
    dtype: str,
    device: str | torch.device,
    cache: QuantCache,
    *,
    load: Callable[..., torch.nn.Module] = load_model,
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """``(model, info)``: the model of GGUF ``source`` in ``dtype`` on ``device``, through the base-model cache.

    ``info`` says ``base_cache`` (``hit``, ``built`` or ``off``), ``load_time_s`` and the entry's key. ``load``
    (the GGUF loader, :func:`~pplgate.models.source.load_model`) is a parameter for the tests.
    """
    t0 = time.perf_counter()
    if not cache.enabled or not cacheable(source):
        model = load(source, dtype=dtype, device=device)
        return model, {"base_cache": "off", "load_time_s": time.perf_counter() - t0}
    dev = resolve_device(device)
    parts = key_parts(source, "base-model", dtype)
    key = cache_key(parts)
    built: dict[str, Any] = {}

    def build(tmp: Path) -> dict[str, Any]:
        from safetensors.torch import save_model

        model = load(source, dtype=dtype, device="cpu")  # load_model loads on the CPU, then moves: the same tensors
        built["model"] = model
        built["load_time_s"] = time.perf_counter() - t0
        model.config.save_pretrained(str(tmp))
        save_model(model, str(tmp / WEIGHTS))  # shared (tied) tensors stored once; from_pretrained ties them again
        why = _same_model(model, _read(tmp, dtype))
        if why is not None:
            raise _NoRoundTrip(why)
        return {"gguf_load_time_s": built["load_time_s"], "name_or_path": model.config._name_or_path}

    meta = {"source": source.describe(), "kind": "base-model", "dtype": dtype, "key_parts": parts}
    got = _get_or_build(
        cache,
        key,
        build,
        meta,
        f"the {dtype} model of {source.describe()} does not read back identically from safetensors",
        "is de-quantized from the GGUF file in every session",
    )
    if got is None:  # not round-tripping, or not written (warned; the build may not have run)
        model = built["model"].to(dev) if "model" in built else load(source, dtype=dtype, device=device)
        return model.eval(), {"base_cache": "uncacheable", "load_time_s": time.perf_counter() - t0}
    entry, hit = got
    info: dict[str, Any] = {"base_cache": "hit" if hit else "built", "base_cache_key": key}
    model = built.get("model")
    if model is None:  # a hit, or another process built it while this one waited on the lock
        try:
            model = _read(entry.path, dtype)
        except Exception as exc:
            raise ModelLoadError(
                f"the base-model cache entry {entry.path} of {source.describe()} verifies but does not load "
                f"({type(exc).__name__}: {exc}); remove it with: pplgate cache clear --key {key}"
            ) from exc
        _restore_name(model, entry.meta.get("name_or_path"))
    info["load_time_s"] = time.perf_counter() - t0
    return model.to(dev).eval(), info


def _read(directory: Path, dtype: str) -> torch.nn.Module:
    """The model of a base-model entry (``config.json`` + ``model.safetensors``), on the CPU."""
    from transformers import AutoModelForCausalLM

    with library_bars_off(), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return AutoModelForCausalLM.from_pretrained(str(directory), dtype=torch_dtype(dtype)).eval()


def _tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {**dict(model.named_parameters(remove_duplicate=False)), **dict(model.named_buffers(remove_duplicate=False))}


def _same_model(a: torch.nn.Module, b: torch.nn.Module) -> str | None:
    """Why ``b`` (read back) is not ``a`` tensor for tensor (parameters and every buffer), or None."""
    ta, tb = _tensors(a), _tensors(b)
    if ta.keys() != tb.keys():
        return f"other tensors: {sorted(ta.keys() ^ tb.keys())[:5]}"
    for name, x in ta.items():
        y = tb[name]
        if x.dtype != y.dtype or x.shape != y.shape or not torch.equal(x, y):
            return f"tensor {name} differs ({x.dtype} {tuple(x.shape)} vs {y.dtype} {tuple(y.shape)})"
    if type(a) is not type(b):
        return f"class {type(b).__name__} instead of {type(a).__name__}"
    return None


class _NoRoundTrip(Exception):
    """What was read back from the files a build wrote is not what was saved (the reason is the message)."""


def _get_or_build(
    cache: QuantCache,
    key: str,
    build: Callable[[Path], dict[str, Any]],
    meta: dict[str, Any],
    what: str,
    otherwise: str,
) -> tuple[CacheEntry, bool] | None:
    """``cache.get_or_build``; None, with a :class:`CacheWarning` ("pplgate: ``what`` (why); it is not cached
    and ``otherwise``"), when what the build wrote does not read back as it was."""
    try:
        return cache.get_or_build(key, build, meta)
    except _NoRoundTrip as exc:
        warnings.warn(f"pplgate: {what} ({exc}); it is not cached and {otherwise}", CacheWarning, stacklevel=3)
        return None


def _same_tokenizer(a: Any, b: Any) -> str | None:
    """Why ``b`` (read back) differs from ``a`` (class, fingerprint, the probe's encoding), or None."""
    if type(a) is not type(b):
        return f"class {type(b).__name__} instead of {type(a).__name__}"
    if tokenizer_fingerprint(a) != tokenizer_fingerprint(b):
        return "another tokenizer_sha256"
    if a(_PROBE).input_ids != b(_PROBE).input_ids:
        return "another encoding of a probe text"
    return None


def load_tokenizer_cached(
    source: ModelSource, cache: QuantCache, *, load: Callable[[ModelSource], Any] = load_tokenizer
) -> tuple[Any, dict[str, Any]]:
    """``(tokenizer, info)``: the tokenizer of GGUF ``source``, through the cache (``info['tokenizer_cache']``)."""
    t0 = time.perf_counter()
    if not cache.enabled or not cacheable(source):
        return load(source), {"tokenizer_cache": "off", "tokenizer_load_s": time.perf_counter() - t0}
    parts = key_parts(source, "tokenizer")
    key = cache_key(parts)
    built: dict[str, Any] = {}

    def build(tmp: Path) -> dict[str, Any]:
        from transformers import AutoTokenizer

        tok = load(source)
        built["tokenizer"] = tok
        tok.save_pretrained(str(tmp / TOKENIZER_DIR))
        why = _same_tokenizer(tok, AutoTokenizer.from_pretrained(str(tmp / TOKENIZER_DIR)))
        if why is not None:
            raise _NoRoundTrip(why)
        return {"name_or_path": tok.name_or_path, "tokenizer_sha256": tokenizer_fingerprint(tok)}

    meta = {"source": source.describe(), "kind": "tokenizer", "key_parts": parts}
    what = f"the tokenizer of {source.describe()} does not survive save_pretrained"
    got = _get_or_build(cache, key, build, meta, what, "is read from the GGUF file in every session")
    if got is None:
        tok = built["tokenizer"] if "tokenizer" in built else load(source)
        return tok, {"tokenizer_cache": "uncacheable", "tokenizer_load_s": time.perf_counter() - t0}
    entry, hit = got
    tok = built.get("tokenizer")
    if tok is None:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(entry.path / TOKENIZER_DIR))
        if tokenizer_fingerprint(tok) != entry.meta.get("tokenizer_sha256"):
            warnings.warn(
                f"pplgate cache entry {entry.path} does not reproduce the tokenizer of {source.describe()} "
                "(another tokenizer_sha256); rebuilding it",
                CacheWarning,
                stacklevel=2,
            )
            cache.discard(key)
            return load_tokenizer_cached(source, cache, load=load)
        _restore_name(tok, entry.meta.get("name_or_path"))
    return tok, {
        "tokenizer_cache": "hit" if hit else "built",
        "tokenizer_cache_key": key,
        "tokenizer_load_s": time.perf_counter() - t0,
    }


def _config_dict(config: Any) -> dict[str, Any]:
    d = config.to_dict()
    d.pop("_name_or_path", None)
    d.pop("transformers_version", None)
    return d


def load_config_cached(
    source: ModelSource, cache: QuantCache, *, load: Callable[[ModelSource], Any] = load_config
) -> tuple[Any, dict[str, Any]]:
    """``(config, info)``: the ``PretrainedConfig`` of GGUF ``source`` (no weights), through the cache.

    transformers parses the whole GGUF header for a config (~5 s for SmolLM2, the tokenizer arrays
    included); the entry is its ``config.json``, kept only when it reads back with the same ``to_dict()``.
    Other sources, and cache mode ``off``, go to ``load`` (:func:`pplgate.models.layers.load_config`).
    """
    if not cache.enabled or not cacheable(source):
        return load(source), {"config_cache": "off"}
    from transformers import AutoConfig

    parts = key_parts(source, "config")
    key = cache_key(parts)
    built: dict[str, Any] = {}

    def build(tmp: Path) -> dict[str, Any]:
        config = load(source)
        built["config"] = config
        config.save_pretrained(str(tmp))
        if _config_dict(AutoConfig.from_pretrained(str(tmp))) != _config_dict(config):
            raise _NoRoundTrip("the config reads back with other values")
        return {"name_or_path": config._name_or_path}

    meta = {"source": source.describe(), "kind": "config", "key_parts": parts}
    what = f"the config of {source.describe()} does not survive save_pretrained"
    got = _get_or_build(cache, key, build, meta, what, "is parsed from the GGUF file in every session")
    if got is None:
        return built["config"] if "config" in built else load(source), {"config_cache": "uncacheable"}
    entry, hit = got
    config = built.get("config")
    if config is None:
        config = AutoConfig.from_pretrained(str(entry.path))
        _restore_name(config, entry.meta.get("name_or_path"))
    return config, {"config_cache": "hit" if hit else "built", "config_cache_key": key}
