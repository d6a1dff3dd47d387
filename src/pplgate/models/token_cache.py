"""On-disk cache of the canonical text's token ids, per (tokenizer, text): tokenize once per machine.

Tokenizing the 1.3 MB WikiText-2 test split takes 10-13 s with SmolLM2's tokenizer on the H100 runner,
more than the model's whole evaluation. An entry (in the :class:`~pplgate.models.quant_cache.QuantCache`,
same root, atomic writes, manifest, sha256 check of every file on read) is keyed by
:func:`~pplgate.protocol.tokens.tokenizer_fingerprint` (vocabulary, merges, normaliser, special-token
behaviour), the text's sha256 and the ``tokenizers``/``transformers`` versions, and holds the ids
(``tokens.safetensors``) and whether a BOS was added. The name of the tokenizer is taken from the live
tokenizer, never from the entry.

A read also re-encodes the text's first 2,000 characters and compares them with the entry's first ids
(the last few excluded: they may merge across the cut); a mismatch means the fingerprint missed a
difference, and the entry is discarded and rebuilt with a :class:`~pplgate.errors.CacheWarning`.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from pplgate.errors import CacheWarning
from pplgate.models.hashing import library_versions
from pplgate.models.quant_cache import QuantCache, cache_key
from pplgate.protocol.dataset import CanonicalText
from pplgate.protocol.tokens import TokenizedText, tokenize_canonical, tokenizer_fingerprint

TOKEN_CACHE_FORMAT = 1
TOKENS_FILE = "tokens.safetensors"
_PROBE_CHARS = 2000
_PROBE_SLACK = 8  # ids at the end of the probe that may differ from the full encoding (merges across the cut)


def key_parts(fingerprint: str, text: CanonicalText) -> dict[str, Any]:
    """The content that names an entry: format, tokenizer fingerprint, text sha256, library versions."""
    return {
        "format": TOKEN_CACHE_FORMAT,
        "type": "tokens",
        "tokenizer_sha256": fingerprint,
        "text_sha256": text.sha256,
        "versions": library_versions("tokenizers", "transformers"),
    }


def _probe_mismatch(tokenizer: Any, text: str, ids: torch.Tensor) -> str | None:
    """Why the cached ids disagree with the live tokenizer on the text's start (None: they agree)."""
    probe = tokenizer(text[:_PROBE_CHARS]).input_ids
    keep = max(len(probe) - _PROBE_SLACK, 1)
    cached = ids[:keep].tolist()
    if list(probe[:keep]) != cached:
        first = next((i for i, (a, b) in enumerate(zip(probe, cached, strict=False)) if a != b), keep)
        return f"the tokenizer encodes the text's start differently from the entry (first difference at id {first})"
    return None


def tokenize_cached(tokenizer: Any, text: CanonicalText, cache: QuantCache) -> tuple[TokenizedText, dict[str, Any]]:
    """``(tokens, info)``: :func:`tokenize_canonical` of ``text``, read from ``cache`` when an entry exists.

    ``info['token_cache']`` is ``hit``, ``built`` or ``off`` (cache mode ``off``).
    """
    if not cache.enabled:
        return tokenize_canonical(tokenizer, text.text), {"token_cache": "off"}
    fingerprint = tokenizer_fingerprint(tokenizer)
    parts = key_parts(fingerprint, text)
    key = cache_key(parts)
    built: dict[str, TokenizedText] = {}

    def build(tmp: Path) -> dict[str, Any]:
        from safetensors.torch import save_file

        tokens = tokenize_canonical(tokenizer, text.text)
        built["tokens"] = tokens
        save_file({"ids": tokens.ids.contiguous()}, str(tmp / TOKENS_FILE))
        return {"bos_added": tokens.bos_added, "n_tokens": tokens.n_tokens}

    name = str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__)
    meta = {"kind": "tokens", "source": f"{text.source} tokenized by {name}", "key_parts": parts}
    entry, hit = cache.get_or_build(key, build, meta)
    tokens = built.get("tokens")
    if tokens is None:
        from safetensors.torch import load_file

        ids = load_file(str(entry.path / TOKENS_FILE))["ids"].to(torch.long)
        why = _probe_mismatch(tokenizer, text.text, ids)
        if why is not None or ids.numel() != entry.meta.get("n_tokens"):
            warnings.warn(
                f"pplgate cache entry {entry.path} does not match the tokenizer {name!r} "
                f"({why or 'another token count'}); rebuilding it",
                CacheWarning,
                stacklevel=2,
            )
            cache.discard(key)
            return tokenize_cached(tokenizer, text, cache)
        tokens = TokenizedText(
            ids=ids, bos_added=bool(entry.meta["bos_added"]), tokenizer_name=name, tokenizer_sha256=fingerprint
        )
    return tokens, {"token_cache": "hit" if hit else "built", "token_cache_key": key}
