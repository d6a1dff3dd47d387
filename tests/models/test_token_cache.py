"""The token cache: the canonical text's ids stored once per (tokenizer, text), read back identical."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from support import synthetic_dataset

from pplgate.errors import CacheWarning
from pplgate.models.quant_cache import QuantCache, cache_key
from pplgate.models.token_cache import TOKENS_FILE, key_parts, tokenize_cached
from pplgate.protocol.tokens import tokenize_canonical, tokenizer_fingerprint


@pytest.fixture(scope="module")
def wiki_start(canonical_text):
    """The canonical text's first 200 kB (the real text, a size that tokenizes in a second)."""
    return synthetic_dataset(canonical_text.text[:200_000], canonical=False)


@pytest.mark.parametrize("name", ["gpt2_tokenizer", "llama2_tokenizer"])
def test_hit_equals_fresh_tokenization(name, request, wiki_start, tmp_path: Path) -> None:
    tok = request.getfixturevalue(name)
    cache = QuantCache(tmp_path / "c")
    first, info1 = tokenize_cached(tok, wiki_start, cache)
    second, info2 = tokenize_cached(tok, wiki_start, cache)
    fresh = tokenize_canonical(tok, wiki_start.text)
    assert (info1["token_cache"], info2["token_cache"]) == ("built", "hit")
    assert info1["token_cache_key"] == info2["token_cache_key"]
    for got in (first, second):
        assert got.ids.dtype == torch.long
        assert torch.equal(got.ids, fresh.ids)
        assert (got.bos_added, got.tokenizer_sha256, got.tokenizer_name) == (
            fresh.bos_added,
            fresh.tokenizer_sha256,
            fresh.tokenizer_name,
        )
    assert second.bos_added is (name == "llama2_tokenizer")  # Llama-2 adds one BOS, GPT-2 none


def test_key_names_tokenizer_and_text(gpt2_tokenizer, llama2_tokenizer, wiki_start, tmp_path: Path) -> None:
    cache = QuantCache(tmp_path / "c")
    other_text = synthetic_dataset(wiki_start.text[:100_000])
    keys = {
        tokenize_cached(tok, text, cache)[1]["token_cache_key"]
        for tok in (gpt2_tokenizer, llama2_tokenizer)
        for text in (wiki_start, other_text)
    }
    assert len(keys) == 4
    assert len([d for d in (tmp_path / "c").iterdir() if d.is_dir() and not d.name.startswith(".")]) == 4


def test_off_mode_writes_nothing(gpt2_tokenizer, wiki_start, tmp_path: Path) -> None:
    tokens, info = tokenize_cached(gpt2_tokenizer, wiki_start, QuantCache(tmp_path / "c", mode="off"))
    assert info == {"token_cache": "off"}
    assert torch.equal(tokens.ids, tokenize_canonical(gpt2_tokenizer, wiki_start.text).ids)
    assert not (tmp_path / "c").exists()


def _entry_dir(tok, text, root: Path) -> Path:
    return root / cache_key(key_parts(tokenizer_fingerprint(tok), text))


def test_corrupt_entry_is_rebuilt(gpt2_tokenizer, wiki_start, tmp_path: Path) -> None:
    cache = QuantCache(tmp_path / "c")
    tokenize_cached(gpt2_tokenizer, wiki_start, cache)
    f = _entry_dir(gpt2_tokenizer, wiki_start, tmp_path / "c") / TOKENS_FILE
    data = bytearray(f.read_bytes())
    data[-3] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.warns(CacheWarning, match="sha256 mismatch"):
        tokens, info = tokenize_cached(gpt2_tokenizer, wiki_start, cache)
    assert info["token_cache"] == "built"
    assert torch.equal(tokens.ids, tokenize_canonical(gpt2_tokenizer, wiki_start.text).ids)


def test_entry_that_disagrees_with_the_tokenizer_is_rebuilt(gpt2_tokenizer, wiki_start, tmp_path: Path) -> None:
    """A valid entry (manifest and sha256 rewritten) whose ids the tokenizer does not produce: the probe catches it."""
    from safetensors.torch import load_file, save_file

    from pplgate.models.quant_cache import MANIFEST, sha256_file

    cache = QuantCache(tmp_path / "c")
    tokenize_cached(gpt2_tokenizer, wiki_start, cache)
    d = _entry_dir(gpt2_tokenizer, wiki_start, tmp_path / "c")
    ids = load_file(str(d / TOKENS_FILE))["ids"]
    ids[5] = (ids[5] + 1) % 50257
    save_file({"ids": ids}, str(d / TOKENS_FILE))
    import json

    manifest = json.loads((d / MANIFEST).read_text())
    manifest["files"][TOKENS_FILE] = {"size": (d / TOKENS_FILE).stat().st_size, "sha256": sha256_file(d / TOKENS_FILE)}
    (d / MANIFEST).write_text(json.dumps(manifest))
    with pytest.warns(CacheWarning, match="first difference at id 5"):
        tokens, info = tokenize_cached(gpt2_tokenizer, wiki_start, cache)
    assert info["token_cache"] == "built"
    assert torch.equal(tokens.ids, tokenize_canonical(gpt2_tokenizer, wiki_start.text).ids)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert tokenize_cached(gpt2_tokenizer, wiki_start, cache)[1]["token_cache"] == "hit"
