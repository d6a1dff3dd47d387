"""On-disk cache of the canonical text's token ids, per (tokenizer, text): tokenize once per machine.

Tokenizing the 1.3 MB WikiText-2 test split takes 10-13 s with SmolLM2's tokenizer on the H100 runner,
more than the model's whole evaluation. An entry (in the :class:`~pplgate.models.quant_cache.QuantCache`,
same root, atomic writes, manifest, sha256 check of every file on read) is keyed by
:func:`~pplgate.protocol.tokens.tokenizer_fingerprint` (vocabulary, merges, normaliser, special-token
behaviour), the text's sha256 and the ``tokenizers``/``transformers`` versions, and holds the ids
(``tokens.safetensors``) and whether a BOS was added. The name of the tokenizer is taken from the live
tokenizer, never from the entry.

A read checks the whole entry against the live tokenizer: it decodes every cached id and compares the sha256 of
that text with the one recorded at build (the live tokenizer must map the ids back to the same text: 0.12 s for
GPT-2's 288k ids of WikiText-2, 0.30 s for Llama-2's 341k, against 1.6-2.0 s to tokenize), and re-encodes the
text's first 2,000 characters, compared with the entry's first ids (the last few excluded: they may merge across the
cut). A mismatch means the fingerprint missed a difference: the entry is discarded and rebuilt with a
:class:`~pplgate.errors.CacheWarning`. An entry that cannot be written (full disk, read-only root) is skipped with
one warning and the ids tokenized in memory are used.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path
from typing import Any

import torch

from pplgate.errors import CacheWarning
from pplgate.models.hashing import library_versions
from pplgate.models.quant_cache import QuantCache, cache_key
from pplgate.protocol.dataset import CanonicalText
from pplgate.protocol.tokens import TokenizedText, tokenize_canonical, tokenizer_fingerprint

TOKEN_CACHE_FORMAT = 2  # 2: the sha256 of the decoded ids in the manifest
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


def decoded_sha256(tokenizer: Any, ids: torch.Tensor, bos_added: bool) -> str:
    """The sha256 of the text ``tokenizer`` decodes ``ids`` to (the added BOS left out): covers every id."""
    return hashlib.sha256(tokenizer.decode(ids[1:] if bos_added else ids).encode("utf-8")).hexdigest()


def _full_mismatch(tokenizer: Any, tokens: TokenizedText, meta: dict[str, Any]) -> str | None:
    if tokens.ids.numel() != meta.get("n_tokens"):
        return "another token count"
    if decoded_sha256(tokenizer, tokens.ids, tokens.bos_added) != meta.get("decoded_sha256"):
        return "the tokenizer decodes the entry's ids to another text"
    return None


def tokenize_cached(tokenizer: Any, text: CanonicalText, cache: QuantCache) -> tuple[TokenizedText, dict[str, Any]]:
    """``(tokens, info)``: :func:`tokenize_canonical` of ``text``, read from ``cache`` when an entry exists.

    ``info['token_cache']`` is ``hit``, ``built``, ``not written`` (warned) or ``off`` (cache mode ``off``).
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
        decoded = decoded_sha256(tokenizer, tokens.ids, tokens.bos_added)
        return {"bos_added": tokens.bos_added, "n_tokens": tokens.n_tokens, "decoded_sha256": decoded}

    name = str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__)
    meta = {"kind": "tokens", "source": f"{text.source} tokenized by {name}", "key_parts": parts}
    got = cache.get_or_build(key, build, meta)
    if got is None:  # not written (warned): the ids tokenized in memory, if the build ran
        tokens = built.get("tokens") or tokenize_canonical(tokenizer, text.text)
        return tokens, {"token_cache": "not written", "token_cache_key": key}
    entry, hit = got
    tokens = built.get("tokens")
    if tokens is None:
        from safetensors.torch import load_file

        ids = load_file(str(entry.path / TOKENS_FILE))["ids"].to(torch.long)
        tokens = TokenizedText(
            ids=ids, bos_added=bool(entry.meta["bos_added"]), tokenizer_name=name, tokenizer_sha256=fingerprint
        )
        why = _probe_mismatch(tokenizer, text.text, ids) or _full_mismatch(tokenizer, tokens, entry.meta)
        if why is not None:
            warnings.warn(
                f"pplgate cache entry {entry.path} does not match the tokenizer {name!r} ({why}); rebuilding it",
                CacheWarning,
                stacklevel=2,
            )
            cache.discard(key)
            return tokenize_cached(tokenizer, text, cache)
    return tokens, {"token_cache": "hit" if hit else "built", "token_cache_key": key}
