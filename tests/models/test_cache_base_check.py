"""Issue #24: a quantization-cache hit is checked against its base model (pplgate.models.base_check).

Real tiny models saved to disk and the user kind's real cache round trip. A hub source keeps its key when its
``main`` moves: that is emulated by giving two model directories one source fingerprint.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from support import save_tiny_llama, team_package

from pplgate.errors import CacheWarning
from pplgate.models import quant_cache
from pplgate.models.base_check import base_record, finish_record, hit_problem
from pplgate.models.registry import make_variant
from pplgate.models.source import ModelSource, load_model, load_tokenizer
from pplgate.models.variant import ModelContext

QUANTIZER = """
import torch


@torch.no_grad()
def halve(model, tokenizer, calibration_texts):
    for name, p in model.named_parameters():
        if ".layers." in name and name.endswith("proj.weight"):
            p.mul_(0.5)
    return model
"""
PARAMS = {"entry": "teamb.quant:halve"}


@pytest.fixture
def team_pkg(tmp_path, monkeypatch):
    yield from team_package(tmp_path, monkeypatch, "teamb", QUANTIZER)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bases")
    return {
        "a": save_tiny_llama(d / "a", seed=0),
        "moved": save_tiny_llama(d / "moved", seed=1),  # same config, other weights: main moved on the hub
        "deeper": save_tiny_llama(d / "deeper", layers=3, seed=0),  # another layer count
    }


def _ctx(model_dir: Path, cache_dir: Path) -> ModelContext:
    src = ModelSource(str(model_dir))
    return ModelContext(source=src, device="cpu", tokenizer=load_tokenizer(src), cache_dir=str(cache_dir))


def _one_key(monkeypatch) -> None:
    monkeypatch.setattr(
        quant_cache, "source_fingerprint", lambda src: {"type": "hub", "id": "org/m", "revision": "main"}
    )


def _fresh(model_dir: Path, tmp_path: Path):
    ctx = _ctx(model_dir, tmp_path / "nocache")
    ctx.cache_mode = "off"
    return make_variant("user", PARAMS).prepare(ctx)


def test_a_hit_on_the_same_base_is_silent_and_records_the_untouched_tensors(team_pkg, models, tmp_path):
    built = make_variant("user", PARAMS).prepare(_ctx(models["a"], tmp_path / "c"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        hit = make_variant("user", PARAMS).prepare(_ctx(models["a"], tmp_path / "c"))
    assert (built.origin, hit.origin) == ("quantized", "cache")
    manifest = json.loads((Path(hit.info["cache_entry"]) / "manifest.json").read_text())
    assert set(manifest["meta"]["base"]["untouched"]) == {"model.embed_tokens.weight", "model.norm.weight"}
    assert manifest["meta"]["base"]["config"]["num_hidden_layers"] == 2


@pytest.mark.parametrize(
    ("other", "match"),
    [
        ("moved", r"the base model's model.embed_tokens.weight differs from the one the entry was built from"),
        ("deeper", r"its config differs from the base model's: \{'num_hidden_layers': \(2, 3\)\}"),
    ],
)
def test_a_hit_on_another_base_under_the_same_key_is_rebuilt_with_one_warning(
    team_pkg, models, tmp_path, monkeypatch, other, match
):
    _one_key(monkeypatch)
    make_variant("user", PARAMS).prepare(_ctx(models["a"], tmp_path / "c"))
    with pytest.warns(CacheWarning, match=f"does not match its base model \\(({match})") as rec:
        got = make_variant("user", PARAMS).prepare(_ctx(models[other], tmp_path / "c"))
    assert len([w for w in rec if issubclass(w.category, CacheWarning)]) == 1
    assert got.origin == "quantized"
    fresh = _fresh(models[other], tmp_path)
    for (name, a), (_, b) in zip(got.model.state_dict().items(), fresh.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert make_variant("user", PARAMS).prepare(_ctx(models[other], tmp_path / "c")).origin == "cache"


def test_an_entry_rewritten_consistently_is_caught_by_its_untouched_tensors(team_pkg, models, tmp_path):
    """Files and manifest rewritten together (the file checks pass): the embeddings are not the recorded ones."""
    from safetensors.torch import load_file, save_file

    built = make_variant("user", PARAMS).prepare(_ctx(models["a"], tmp_path / "c"))
    d = Path(built.info["cache_entry"])
    (f,) = (d / "model").glob("*.safetensors")
    tensors = load_file(str(f))
    tensors["model.embed_tokens.weight"][3] += 1.0
    save_file(tensors, str(f), metadata={"format": "pt"})
    manifest = json.loads((d / "manifest.json").read_text())
    rel = str(f.relative_to(d))
    manifest["files"][rel] = {"size": f.stat().st_size, "sha256": quant_cache.sha256_file(f)}
    (d / "manifest.json").write_text(json.dumps(manifest))
    with pytest.warns(CacheWarning, match=r"the entry's model.embed_tokens.weight is not the base model's"):
        got = make_variant("user", PARAMS).prepare(_ctx(models["a"], tmp_path / "c"))
    assert got.origin == "quantized"


def test_hit_problem_uses_the_held_float_model_when_there_is_one(models):
    a = load_model(ModelSource(str(models["a"])), dtype="fp32", device="cpu")
    moved = load_model(ModelSource(str(models["moved"])), dtype="fp32", device="cpu")
    record = finish_record(base_record(a), a)
    assert hit_problem(a, record, a.config, None) is None
    assert hit_problem(a, record, a.config, a) is None
    # the entry is consistent with its record; only the held base shows that the base moved
    assert "differs from the one the entry was built from" in hit_problem(a, record, moved.config, moved)
    assert hit_problem(a, None, a.config, moved) is None  # an entry from before: the config check only


RTN = {
    "recipe": [
        {
            "QuantizationModifier": {
                "ignore": ["lm_head"],
                "config_groups": {
                    "g": {
                        "targets": ["Linear"],
                        "weights": {"num_bits": 8, "type": "int", "symmetric": True, "strategy": "channel"},
                    }
                },
            }
        }
    ]
}


def test_llmc_recipe_hit_checks_its_base_against_the_held_float_model(models, tmp_path, monkeypatch):
    """llm-compressor's compressed-tensors entry: silent on its own base; the session's float model (held, no
    extra load) of a base that moved under the same key rebuilds it with one warning."""
    pytest.importorskip("llmcompressor")
    _one_key(monkeypatch)
    first = make_variant("llmc-recipe", RTN).prepare(_ctx(models["a"], tmp_path / "c"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert make_variant("llmc-recipe", RTN).prepare(_ctx(models["a"], tmp_path / "c")).origin == "cache"
    assert first.origin == "quantized"
    moved = load_model(ModelSource(str(models["moved"])), dtype="fp32", device="cpu")
    ctx = _ctx(models["moved"], tmp_path / "c")
    ctx.holder = lambda dtype: moved if dtype == "fp32" else None
    with pytest.warns(CacheWarning, match="the base model's model.embed_tokens.weight differs"):
        assert make_variant("llmc-recipe", RTN).prepare(ctx).origin == "quantized"


def test_a_full_disk_while_saving_the_quantized_model_measures_it_in_memory(team_pkg, models, tmp_path, monkeypatch):
    """Issue #24: ENOSPC from save_pretrained (what a full tmpfs gave, through safetensors) is one CacheWarning;
    the model quantized in memory is measured, no entry is left, the next run builds again."""
    import errno
    import os

    from transformers import PreTrainedModel

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", full)
    with pytest.warns(CacheWarning, match=r"cannot be written \(No space left on device \(ENOSPC\)\)") as rec:
        got = make_variant("user", PARAMS).prepare(_ctx(models["a"], tmp_path / "c"))
    assert len([w for w in rec if issubclass(w.category, CacheWarning)]) == 1
    assert (got.origin, got.info["cache"]) == ("quantized", "not written") and "cache_entry" not in got.info
    fresh = _fresh(models["a"], tmp_path)
    for (name, a), (_, b) in zip(got.model.state_dict().items(), fresh.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert [p.name for p in (tmp_path / "c").iterdir() if p.is_dir()] == []
