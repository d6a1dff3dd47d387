"""The base-model cache: de-quantized GGUF models and GGUF tokenizers stored once, read back bit-identical."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from support import random_ids, tiny_llama

from pplgate.errors import CacheWarning
from pplgate.models.base_cache import (
    WEIGHTS,
    cacheable,
    key_parts,
    load_model_cached,
    load_tokenizer_cached,
)
from pplgate.models.quant_cache import QuantCache, cache_key
from pplgate.models.source import ModelSource


@pytest.fixture
def gguf_source(tmp_path: Path) -> ModelSource:
    """A local "GGUF" source: the file's content names the entry; the loader below builds the model."""
    d = tmp_path / "src"
    d.mkdir()
    (d / "m.gguf").write_bytes(b"GGUF not really" * 10)
    return ModelSource(str(d), "m.gguf")


@pytest.fixture
def tied_dir(tmp_path: Path) -> Path:
    """A tiny tied Llama saved as a model directory: the stand-in for what transformers reads from a GGUF."""
    d = tmp_path / "tiny"
    tiny_llama(tie=True, seed=3).save_pretrained(str(d))
    return d


def _loader(calls: list, tied_dir: Path):
    """A GGUF loader stand-in: ``from_pretrained`` in the asked dtype, as :func:`load_model` does."""
    from transformers import AutoModelForCausalLM

    def load(source, dtype="fp32", device="cpu"):
        calls.append(dtype)
        dt = {"fp32": torch.float32, "fp16": torch.float16}[dtype]
        model = AutoModelForCausalLM.from_pretrained(str(tied_dir), dtype=dt)
        model.config._name_or_path = "the-gguf-dir"
        return model.eval()

    return load


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(random_ids(48, 101, seed=1)[None]).logits


@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_second_load_is_a_hit_with_bit_identical_weights_and_logits(tmp_path, gguf_source, tied_dir, dtype):
    cache, calls = QuantCache(tmp_path / "cache"), []
    first, info1 = load_model_cached(gguf_source, dtype, "cpu", cache, load=_loader(calls, tied_dir))
    second, info2 = load_model_cached(gguf_source, dtype, "cpu", cache, load=_loader(calls, tied_dir))
    assert (info1["base_cache"], info2["base_cache"], calls) == ("built", "hit", [dtype])
    a, b = first.state_dict(), second.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)
    assert second.lm_head.weight.data_ptr() == second.model.embed_tokens.weight.data_ptr()  # tied again
    assert torch.equal(_logits(first), _logits(second))
    assert second.config._name_or_path == "the-gguf-dir"  # not the cache path
    assert not second.training


def test_key_names_the_content_dtype_and_versions(tmp_path, gguf_source):
    k32 = cache_key(key_parts(gguf_source, "base-model", "fp32"))
    assert k32 != cache_key(key_parts(gguf_source, "base-model", "fp16"))
    assert k32 != cache_key(key_parts(gguf_source, "tokenizer"))
    parts = key_parts(gguf_source, "base-model", "fp32")
    assert {"torch", "transformers", "gguf"} <= set(parts["versions"])
    (Path(gguf_source.path_or_id) / "m.gguf").write_bytes(b"other content")
    assert cache_key(key_parts(gguf_source, "base-model", "fp32")) != k32


def test_corrupt_weights_are_reported_and_rebuilt(tmp_path, gguf_source, tied_dir):
    cache, calls = QuantCache(tmp_path / "cache"), []
    load_model_cached(gguf_source, "fp32", "cpu", cache, load=_loader(calls, tied_dir))
    key = cache_key(key_parts(gguf_source, "base-model", "fp32"))
    weights = cache.entry_path(key) / WEIGHTS
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.warns(CacheWarning, match="sha256 mismatch"):
        model, info = load_model_cached(gguf_source, "fp32", "cpu", cache, load=_loader(calls, tied_dir))
    assert info["base_cache"] == "built" and calls == ["fp32", "fp32"]
    assert cache.verify(key)[0] is not None


def test_off_mode_and_non_gguf_sources_load_directly(tmp_path, gguf_source, tied_dir):
    calls: list = []
    load = _loader(calls, tied_dir)
    _, info = load_model_cached(gguf_source, "fp32", "cpu", QuantCache(tmp_path / "c", "off"), load=load)
    assert info["base_cache"] == "off" and not (tmp_path / "c").exists()
    plain = ModelSource(str(tmp_path))  # a model directory: already loads at disk speed
    assert not cacheable(plain)
    _, info = load_model_cached(plain, "fp32", "cpu", QuantCache(tmp_path / "c"), load=load)
    assert info["base_cache"] == "off" and not (tmp_path / "c").exists()


def test_refresh_rebuilds(tmp_path, gguf_source, tied_dir):
    calls: list = []
    load = _loader(calls, tied_dir)
    load_model_cached(gguf_source, "fp32", "cpu", QuantCache(tmp_path / "c"), load=load)
    _, info = load_model_cached(gguf_source, "fp32", "cpu", QuantCache(tmp_path / "c", "refresh"), load=load)
    assert info["base_cache"] == "built" and len(calls) == 2


def test_a_model_that_does_not_read_back_identically_is_not_cached(tmp_path, gguf_source, tied_dir):
    """A model cast after loading keeps fp16 rotary frequencies that from_pretrained would compute in fp32."""
    calls: list = []

    def load(source, dtype="fp32", device="cpu"):
        calls.append(dtype)
        return tiny_llama(tie=True, seed=3).to(torch.float16).eval()

    cache = QuantCache(tmp_path / "cache")
    with pytest.warns(CacheWarning, match="does not read back identically.*rotary_emb.inv_freq"):
        model, info = load_model_cached(gguf_source, "fp16", "cpu", cache, load=load)
    assert info["base_cache"] == "uncacheable" and model.model.rotary_emb.inv_freq.dtype == torch.float16
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CacheWarning)
        assert cache.entries() == []


def test_tokenizer_round_trip_hit(tmp_path, gguf_source, gpt2_tokenizer_dir):
    from transformers import AutoTokenizer

    calls: list = []

    def load(source):
        calls.append(source)
        return AutoTokenizer.from_pretrained(str(gpt2_tokenizer_dir))

    cache = QuantCache(tmp_path / "cache")
    first, info1 = load_tokenizer_cached(gguf_source, cache, load=load)
    second, info2 = load_tokenizer_cached(gguf_source, cache, load=load)
    assert (info1["tokenizer_cache"], info2["tokenizer_cache"], len(calls)) == ("built", "hit", 1)
    assert type(first) is type(second) and second.name_or_path == first.name_or_path
    text = "Hello world, = Valkyria Chronicles III = \n\n"
    assert first(text).input_ids == second(text).input_ids


def test_a_tokenizer_that_does_not_round_trip_is_not_cached(tmp_path, gguf_source, gpt2_tokenizer_dir):
    from transformers import AutoTokenizer

    def save_changed(directory: str) -> None:  # writes files that read back as another tokenizer
        AutoTokenizer.from_pretrained(str(gpt2_tokenizer_dir)).save_pretrained(directory)
        Path(directory, "tokenizer_config.json").write_text('{"bos_token": "!", "eos_token": "!"}')

    def load(source):
        tok = AutoTokenizer.from_pretrained(str(gpt2_tokenizer_dir))
        tok.save_pretrained = save_changed
        return tok

    cache = QuantCache(tmp_path / "cache")
    with pytest.warns(CacheWarning, match="does not survive save_pretrained"):
        tok, info = load_tokenizer_cached(gguf_source, cache, load=load)
    assert info["tokenizer_cache"] == "uncacheable" and tok.bos_token == "<|endoftext|>"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CacheWarning)
        assert [e for e in cache.entries() if not isinstance(e, tuple)] == []


@pytest.mark.slow
def test_smollm2_from_the_cache_gives_the_gguf_logits_bit_for_bit(tmp_path, canonical_text):
    """The real GGUF: the de-quantized load and the cached load give the same tokens and the same logits.

    Equal logits on a 512-token slice of the canonical text imply equal window NLLs and PPL (the engine is
    a function of the logits); a slice keeps the test at one GGUF load and two short forwards.
    """
    from pplgate.models.source import load_tokenizer, resolve_source

    src = resolve_source(None)
    cache = QuantCache(tmp_path / "cache")
    gguf_model, built = load_model_cached(src, "fp32", "cpu", cache)  # the GGUF loader's model, now stored
    cached, info = load_model_cached(src, "fp32", "cpu", cache)
    assert (built["base_cache"], info["base_cache"]) == ("built", "hit")
    assert cached is not gguf_model
    load_tokenizer_cached(src, cache)
    tok, tinfo = load_tokenizer_cached(src, cache)
    assert tinfo["tokenizer_cache"] == "hit"
    text = canonical_text.text[:20_000]
    ids = tok(text, return_tensors="pt").input_ids
    assert torch.equal(ids, load_tokenizer(src)(text, return_tensors="pt").input_ids)
    with torch.no_grad():
        a = gguf_model(ids[:, :512]).logits
        b = cached(ids[:, :512]).logits
    assert torch.equal(a, b)


def test_config_of_a_gguf_is_parsed_once(tmp_path: Path) -> None:
    """The real SmolLM2 GGUF: the config entry reads back with the same values and the GGUF's name."""
    from pplgate.models.base_cache import load_config_cached
    from pplgate.models.layers import load_config
    from pplgate.models.source import resolve_source

    source = resolve_source(None)
    calls: list[ModelSource] = []

    def counting_load(src: ModelSource):
        calls.append(src)
        return load_config(src)

    cache = QuantCache(tmp_path / "c")
    built, info1 = load_config_cached(source, cache, load=counting_load)
    hit, info2 = load_config_cached(source, cache, load=counting_load)
    assert (info1["config_cache"], info2["config_cache"], len(calls)) == ("built", "hit", 1)
    assert hit.to_dict() == built.to_dict()  # the name included
    assert hit.name_or_path == built.name_or_path != str(tmp_path)
    off, info3 = load_config_cached(source, QuantCache(tmp_path / "d", mode="off"), load=counting_load)
    assert info3 == {"config_cache": "off"} and len(calls) == 2 and off.to_dict() == built.to_dict()
