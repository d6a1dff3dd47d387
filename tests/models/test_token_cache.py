"""The token cache: the canonical text's ids stored once per (tokenizer, text), read back identical."""

from __future__ import annotations

import os
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


def _rewrite_ids(d: Path, change) -> None:
    """Rewrite the entry's ids with ``change`` and its manifest record, so that the file checks pass."""
    import json

    from safetensors.torch import load_file, save_file

    from pplgate.models.quant_cache import MANIFEST, sha256_file

    ids = load_file(str(d / TOKENS_FILE))["ids"]
    save_file({"ids": change(ids)}, str(d / TOKENS_FILE))
    manifest = json.loads((d / MANIFEST).read_text())
    manifest["files"][TOKENS_FILE] = {"size": (d / TOKENS_FILE).stat().st_size, "sha256": sha256_file(d / TOKENS_FILE)}
    (d / MANIFEST).write_text(json.dumps(manifest))


def test_a_difference_past_the_probe_is_caught_by_the_decoded_text(gpt2_tokenizer, wiki_start, tmp_path) -> None:
    """One id near the end changed (far past the 2,000-character probe): the decoded text's sha256 catches it."""
    cache = QuantCache(tmp_path / "c")
    fresh, _ = tokenize_cached(gpt2_tokenizer, wiki_start, cache)
    d = _entry_dir(gpt2_tokenizer, wiki_start, tmp_path / "c")

    def change(ids):
        ids[-10] = (ids[-10] + 1) % 50257
        return ids

    _rewrite_ids(d, change)
    with pytest.warns(CacheWarning, match=r"decodes the entry's ids to another text\); rebuilding it"):
        tokens, info = tokenize_cached(gpt2_tokenizer, wiki_start, cache)
    assert info["token_cache"] == "built" and torch.equal(tokens.ids, fresh.ids)
    _rewrite_ids(d, lambda ids: ids[:-1])  # one id fewer
    with pytest.warns(CacheWarning, match="another token count"):
        assert torch.equal(tokenize_cached(gpt2_tokenizer, wiki_start, cache)[0].ids, fresh.ids)


def test_a_full_disk_skips_the_entry_with_one_warning(gpt2_tokenizer, wiki_start, tmp_path, monkeypatch) -> None:
    """safetensors' own error for a full disk (what a full runner raised): the ids are used, nothing is cached."""
    import safetensors.torch
    from safetensors import SafetensorError

    def full(*args, **kwargs):
        raise SafetensorError(
            "Error while serializing: I/O error: No space left on device (os error 28)"  # what a full tmpfs gave
        )

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    cache = QuantCache(tmp_path / "c")
    with pytest.warns(CacheWarning, match=r"cannot be written \(safetensors: .*No space left") as rec:
        tokens, info = tokenize_cached(gpt2_tokenizer, wiki_start, cache)
    assert len([w for w in rec if issubclass(w.category, CacheWarning)]) == 1
    assert info["token_cache"] == "not written"
    assert torch.equal(tokens.ids, tokenize_canonical(gpt2_tokenizer, wiki_start.text).ids)
    assert [p.name for p in (tmp_path / "c").iterdir() if p.is_dir()] == []  # no entry, no temp folder left


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only directories")
def test_a_read_only_root_is_read_and_skipped_for_writes(gpt2_tokenizer, wiki_start, tmp_path) -> None:
    root = tmp_path / "c"
    cache = QuantCache(root)
    fresh, _ = tokenize_cached(gpt2_tokenizer, wiki_start, cache)
    other = synthetic_dataset(wiki_start.text[:50_000])
    root.chmod(0o500)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            tokens, info = tokenize_cached(gpt2_tokenizer, wiki_start, cache)  # a hit needs no write
        assert info["token_cache"] == "hit" and torch.equal(tokens.ids, fresh.ids)
        with pytest.warns(CacheWarning, match="cannot be written .*unwritable root: Permission denied"):
            tokens, info = tokenize_cached(gpt2_tokenizer, other, cache)
        assert info["token_cache"] == "not written"
        assert torch.equal(tokens.ids, tokenize_canonical(gpt2_tokenizer, other.text).ids)
    finally:
        root.chmod(0o700)
