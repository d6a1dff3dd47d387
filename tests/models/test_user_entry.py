"""The ``user`` kind: a team's own quantizer function under the gate (tiny model; the example runs in test_examples)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch
from support import calibration_file, team_package

from pplgate.errors import VariantError
from pplgate.models.registry import known_kinds, make_variant
from pplgate.models.source import ModelSource, load_tokenizer
from pplgate.models.user_entry import code_sha256, load_entry
from pplgate.models.variant import ModelContext

QUANTIZER = """
import torch

CALLS = []


@torch.no_grad()
def halve(model, tokenizer, calibration_texts, *, factor=0.5):
    CALLS.append(len(calibration_texts))
    for name, p in model.named_parameters():
        if ".layers." in name and name.endswith("proj.weight"):
            p.mul_(factor)
    return model


@torch.no_grad()
def halve_but_down(model, tokenizer, calibration_texts):
    for name, p in model.named_parameters():
        if ".layers." in name and name.endswith("proj.weight") and "down_proj" not in name:
            p.mul_(0.5)
    return model


def unchanged(model, tokenizer, calibration_texts):
    return model


def returns_none(model, tokenizer, calibration_texts):
    return None


def returns_other(model, tokenizer, calibration_texts):
    return torch.nn.Linear(2, 2)


def raises(model, tokenizer, calibration_texts):
    raise RuntimeError("the quantizer broke half-way")


NOT_CALLABLE = 3
"""


@pytest.fixture
def team_pkg(tmp_path, monkeypatch):
    yield from team_package(tmp_path, monkeypatch, "teamq", QUANTIZER)


def _ctx(tiny_dir: Path, cache_dir: Path, mode: str = "use") -> ModelContext:
    src = ModelSource(str(tiny_dir))
    return ModelContext(
        source=src, device="cpu", tokenizer=load_tokenizer(src), cache_dir=str(cache_dir), cache_mode=mode
    )


def test_user_kind_is_registered():
    assert "user" in known_kinds()


def test_fingerprint_holds_entry_and_params_not_the_code(team_pkg):
    v = make_variant("user", {"entry": "teamq.quant:halve", "params": {"factor": 0.5}})
    fp = v.fingerprint()
    assert fp == {
        "kind": "user",
        "entry": "teamq.quant:halve",
        "params": {"factor": 0.5},
        "dtype": "auto",
        "calibration": None,
        "config_sha256": None,
    }
    before = code_sha256("teamq.quant")
    (team_pkg / "quant.py").write_text(QUANTIZER.replace("p.mul_(factor)", "p.mul_(factor * 1.0)"))
    assert code_sha256("teamq.quant") != before  # a code change moves the cache key ...
    assert (
        make_variant("user", {"entry": "teamq.quant:halve", "params": {"factor": 0.5}}).fingerprint() == fp
    )  # not this


def test_quantize_then_cache_hit_then_code_change_requantizes(team_pkg, tiny_dir, tmp_path):
    params = {"entry": "teamq.quant:halve", "params": {"factor": 0.5}}
    first = make_variant("user", params).prepare(_ctx(tiny_dir, tmp_path / "cache"))
    assert first.origin == "quantized" and len(first.info["code_sha256"]) == 64
    second = make_variant("user", params).prepare(_ctx(tiny_dir, tmp_path / "cache"))
    assert second.origin == "cache" and second.info["code_sha256"] == first.info["code_sha256"]
    assert (
        second.info["coverage"]
        == first.info["coverage"]
        == "quantized 294,912 of 294,912 decoder weight parameters (100.0%)"
    )
    for (name, a), (_, b) in zip(first.model.state_dict().items(), second.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    (team_pkg / "quant.py").write_text(QUANTIZER + "\n# a comment is a code change too\n")
    third = make_variant("user", params).prepare(_ctx(tiny_dir, tmp_path / "cache"))
    assert third.origin == "quantized" and third.info["code_sha256"] != first.info["code_sha256"]


def test_calibration_texts_and_config_file_reach_the_function(team_pkg, tiny_dir, tmp_path):
    (team_pkg / "quant.py").write_text(
        QUANTIZER + "\n\ndef with_config(model, tokenizer, texts, *, config_path):\n"
        "    CALLS.append(open(config_path).read())\n    return halve(model, tokenizer, texts)\n"  # records len(texts)
    )
    cfg = tmp_path / "recipe.yaml"
    cfg.write_text("scheme: w4\n")
    params = {
        "entry": "teamq.quant:with_config",
        "config": str(cfg),
        "calibration": {"source": str(calibration_file()), "n_samples": 4, "seqlen": 64},
    }
    v = make_variant("user", params)
    fp = v.fingerprint()
    assert fp["calibration"]["n_samples"] == 4 and len(fp["config_sha256"]) == 64
    v.prepare(_ctx(tiny_dir, tmp_path / "cache", "off"))
    import teamq.quant

    assert teamq.quant.CALLS == ["scheme: w4\n", 4]
    cfg.write_text("scheme: w3\n")
    assert make_variant("user", params).fingerprint()["config_sha256"] != fp["config_sha256"]


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({}, r"params.entry is required"),
        ({"entry": "teamq.quant"}, r"must read 'package.module:function'"),
        ({"entry": "teamq.nope:f"}, r"does not import \(ModuleNotFoundError"),
        ({"entry": "teamq.quant:missing"}, r"has no attribute 'missing'"),
        ({"entry": "teamq.quant:NOT_CALLABLE"}, r"is a int, not a callable"),
        ({"entry": "teamq.quant:halve", "params": [1]}, r"params.params must be a mapping"),
        (
            {"entry": "teamq.quant:halve", "config": "/no/such/recipe.yaml"},
            r"config file /no/such/recipe.yaml does not",
        ),
        ({"entry": "teamq.quant:halve", "bits": 4}, r"unknown params \['bits'\]"),
        ({"entry": "teamq.quant:halve", "ignore": [3]}, r"ignore must be a list of module names or 're:' patterns"),
    ],
)
def test_bad_entries_fail_before_any_work(team_pkg, tiny_dir, tmp_path, params, match):
    with pytest.raises(VariantError, match=match):
        v = make_variant("user", params)
        v.check(_ctx(tiny_dir, tmp_path / "cache"))


@pytest.mark.parametrize(
    ("entry", "match"),
    [
        ("teamq.quant:returns_none", "returned None; it must return the model to measure"),
        (
            "teamq.quant:returns_other",
            r"returned a Linear, not a model of the source's architecture \(LlamaForCausalLM\)",
        ),
    ],
)
def test_bad_return_values_are_named(team_pkg, tiny_dir, tmp_path, entry, match):
    with pytest.raises(VariantError, match=match):
        make_variant("user", {"entry": entry}).prepare(_ctx(tiny_dir, tmp_path / "cache"))


def test_a_quantizer_that_raises_is_one_line_with_its_frame_and_leaves_no_cache_entry(team_pkg, tiny_dir, tmp_path):
    cache = tmp_path / "cache"
    where = r"\(at teamq/quant\.py:\d+ in raises\); fix the quantizer"
    with pytest.raises(
        VariantError, match=r"user: teamq\.quant:raises raised RuntimeError: the quantizer broke half-way "
    ):
        make_variant("user", {"entry": "teamq.quant:raises"}).prepare(_ctx(tiny_dir, cache))
    with pytest.raises(VariantError, match=where) as info:
        make_variant("user", {"entry": "teamq.quant:raises"}).prepare(_ctx(tiny_dir, cache))
    assert isinstance(info.value.__cause__, RuntimeError)  # the original stays attached
    assert [p.name for p in cache.iterdir() if not p.name.endswith(".lock")] == []


def test_load_entry_resolves_nested_attributes(team_pkg):
    (team_pkg / "quant.py").write_text(
        QUANTIZER
        + textwrap.dedent("""
        class Methods:
            @staticmethod
            def rtn(model, tokenizer, texts):
                return model
        """)
    )
    assert load_entry("teamq.quant:Methods.rtn").__name__ == "rtn"


def test_the_code_hash_covers_every_file_of_the_package_but_not_bytecode(team_pkg):
    """A changed data file inside the quantizer's package (scales.json) re-quantizes; bytecode does not."""
    before, n = code_sha256("teamq.quant")
    (team_pkg / "scales.json").write_text('{"down_proj": 0.5}')
    after, n_after = code_sha256("teamq.quant")
    assert after != before and n_after == n + 1
    (team_pkg / "__pycache__").mkdir(exist_ok=True)
    (team_pkg / "__pycache__" / "quant.cpython-311.pyc").write_bytes(b"\0bytecode")
    (team_pkg / "stray.pyc").write_bytes(b"\0bytecode")
    assert code_sha256("teamq.quant") == (after, n_after)


def test_what_the_quantizer_left_unquantized_is_an_error_unless_ignored(team_pkg, tiny_dir, tmp_path):
    """A weight the function did not change is named (first few + count); ignore: keeps it on purpose; a function
    that changes nothing is 'nothing was quantized'. The ignore list decides a check, not the number."""
    ctx = _ctx(tiny_dir, tmp_path, "off")
    left = r"user: 2 eligible decoder weights of this llama model were left unquantized \(layers.0.mlp.down_proj.weight"
    with pytest.raises(VariantError, match=left + r".*list their modules in the entry's ignore:"):
        make_variant("user", {"entry": "teamq.quant:halve_but_down"}).prepare(ctx)
    params = {"entry": "teamq.quant:halve_but_down", "ignore": ["re:.*down_proj$"]}
    ok = make_variant("user", params).prepare(ctx)
    assert "(100.0%), ignored by the entry's ignore list (2 weights, 65,536 parameters)" in ok.info["coverage"]
    assert "ignore" not in make_variant("user", params).fingerprint()
    with pytest.raises(VariantError, match=r"user: nothing was quantized in this llama model"):
        make_variant("user", {"entry": "teamq.quant:unchanged"}).prepare(ctx)
