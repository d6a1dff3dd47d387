"""llm-compressor kinds (``gptq``, ``llmc-recipe``) and ``hf-checkpoint``: a tiny real Llama, real llm-compressor."""

from __future__ import annotations

import gc
import json
import sys
import weakref
from pathlib import Path

import pytest
import torch
from support import calibration_file, need_module, random_ids

from pplgate.errors import VariantError
from pplgate.models.registry import known_kinds, make_variant
from pplgate.models.source import ModelSource, load_tokenizer
from pplgate.models.variant import ModelContext

need_module("llmcompressor", "pip install 'pplgate[llmcompressor]'", allow_module_level=True)

GROUPS = {"targets": ["Linear"], "weights": {"num_bits": 4, "type": "int", "strategy": "group", "group_size": 64}}
RTN_RECIPE = [{"QuantizationModifier": {"targets": ["Linear"], "ignore": ["lm_head"], "config_groups": {
    "group_0": {**GROUPS, "weights": {**GROUPS["weights"], "symmetric": False}}}}}]  # fmt: skip
AWQ_RECIPE = [{"AWQModifier": {"n_grid": 4}}, *RTN_RECIPE]


def cal(n: int = 8, seqlen: int = 64) -> dict:
    return {"source": str(calibration_file()), "n_samples": n, "seqlen": seqlen}


def ctx(tiny_dir: Path, cache: Path | None = None, mode: str = "use") -> ModelContext:
    src = ModelSource(str(tiny_dir))
    return ModelContext(source=src, device="cpu", tokenizer=load_tokenizer(src), cache_dir=str(cache), cache_mode=mode)


@torch.no_grad()
def logits(model: torch.nn.Module) -> torch.Tensor:
    return model(random_ids(128, model.config.vocab_size, seed=3)[None]).logits


def test_kinds_are_registered():
    assert {"gptq", "llmc-recipe", "hf-checkpoint"} <= set(known_kinds())


def test_gptq_quantizes_every_linear_deterministically_and_the_cache_round_trip_is_exact(tiny_dir, tmp_path):
    params = {"w_bit": 4, "q_group_size": 64, "sym": False, "calibration": cal()}
    base = logits(make_variant("fp32").prepare(ctx(tiny_dir, mode="off")).model)
    first = make_variant("gptq", params).prepare(ctx(tiny_dir, tmp_path / "c"))
    assert first.origin == "quantized" and first.info["n_quantized_linears"] == 14  # 7 per layer, 2 layers
    assert first.info["calibration_blocks"] >= 1
    assert first.info["coverage"] == "quantized 294,912 of 294,912 decoder weight parameters (100.0%)"  # as reloaded
    again = make_variant("gptq", params).prepare(ctx(tiny_dir, mode="off"))
    a, b = logits(first.model), logits(again.model)
    assert torch.equal(a, b)  # run to run: bitwise
    assert not torch.equal(a, base)  # it did quantize
    hit = make_variant("gptq", params).prepare(ctx(tiny_dir, tmp_path / "c"))
    assert hit.origin == "cache" and (Path(hit.info["cache_entry"]) / "model" / "config.json").is_file()
    assert hit.info["coverage"] == first.info["coverage"]  # what the loaded compressed-tensors modules hold
    saved = json.loads((Path(hit.info["cache_entry"]) / "model" / "config.json").read_text())
    assert saved["quantization_config"]["format"] == "pack-quantized"  # compressed-tensors on disk
    assert torch.equal(logits(hit.model), a)  # save -> load: the in-memory model's logits exactly
    # de-compressed at load: the engine's chunked loss calls the body, which a first-forward hook would miss
    assert hit.model.model.layers[0].self_attn.q_proj.weight.dtype == torch.float32


def test_gptq_fingerprint_names_the_recipe_not_paths(tiny_dir):
    fp = make_variant("gptq", {"q_group_size": 64, "dampening_frac": 0.1, "calibration": cal()}).fingerprint()
    assert fp["kind"] == "gptq" and fp["dampening_frac"] == 0.1 and fp["sym"] is True
    assert set(fp["calibration"]) == {"source_sha256", "n_samples", "seqlen"}
    assert str(calibration_file()) not in repr(fp)


def test_llmc_recipe_rtn_without_data_and_awq_with_data(tiny_dir):
    rtn = make_variant("llmc-recipe", {"recipe": RTN_RECIPE}).prepare(ctx(tiny_dir, mode="off"))
    assert rtn.info["calibration_blocks"] == 0 and rtn.info["n_quantized_linears"] == 14
    awq = make_variant("llmc-recipe", {"recipe": AWQ_RECIPE, "calibration": cal()}).prepare(ctx(tiny_dir, mode="off"))
    assert awq.info["calibration_blocks"] >= 1  # AWQ ran on a CPU-only torch (the pin_memory shim)
    assert not torch.equal(logits(rtn.model), logits(awq.model))


def test_what_a_recipe_ignores_is_named_what_it_misses_is_an_error(tiny_dir):
    """A module the recipe's ignore: lists stays in full precision on purpose (named in the coverage); one its
    targets miss is an error naming it, unless require_all_linears is false."""
    quant = RTN_RECIPE[0]["QuantizationModifier"]
    ignored = [{"QuantizationModifier": {**quant, "ignore": ["lm_head", "re:.*down_proj$"]}}]
    out = make_variant("llmc-recipe", {"recipe": ignored}).prepare(ctx(tiny_dir, mode="off"))
    assert out.info["coverage"] == (
        "quantized 229,376 of 229,376 decoder weight parameters (100.0%), ignored by the recipe's ignore "
        "(2 weights, 65,536 parameters)"
    )
    narrow = [{"QuantizationModifier": {**quant, "targets": ["re:.*self_attn.*"], "config_groups": {
        "group_0": {**quant["config_groups"]["group_0"], "targets": ["re:.*self_attn.*"]}}}}]  # fmt: skip
    with pytest.raises(VariantError, match=r"llmc-recipe: 6 eligible decoder weights of this llama model were left "):
        make_variant("llmc-recipe", {"recipe": narrow}).prepare(ctx(tiny_dir, mode="off"))
    partial = make_variant("llmc-recipe", {"recipe": narrow, "require_all_linears": False})
    assert "left unquantized: 6 weights" in partial.prepare(ctx(tiny_dir, mode="off")).info["coverage"]


def test_recipe_file_is_fingerprinted_by_content(tmp_path, tiny_dir):
    f = tmp_path / "recipe.yaml"
    f.write_text(
        "quant_stage:\n  quant_modifiers:\n    QuantizationModifier:\n      targets: [Linear]\n"
        "      ignore: [lm_head]\n      scheme: W8A16\n"
    )
    v = make_variant("llmc-recipe", {"recipe_file": str(f)})
    fp = v.fingerprint()
    assert fp["recipe_file"] == "recipe.yaml" and len(fp["recipe_sha256"]) == 64 and str(tmp_path) not in repr(fp)
    out = v.prepare(ctx(tiny_dir, mode="off"))
    assert out.info["n_quantized_linears"] == 14


def test_no_leak_after_oneshot(tiny_dir):
    out = make_variant("gptq", {"q_group_size": 64, "calibration": cal(4)}).prepare(ctx(tiny_dir, mode="off"))
    ref = weakref.ref(out.model)
    del out
    gc.collect()
    assert ref() is None  # torch.fx's wrap registry and llm-compressor's session let go of the model


@pytest.mark.parametrize(
    ("kind", "params", "match"),
    [
        ("gptq", {"q_group_size": 96}, r"group size 96 does not fit .*hidden_size .* = 128 is not a multiple"),
        ("gptq", {"actorder": "group"}, r"param actorder must be static, weight or none"),
        ("gptq", {"dampening_frac": "0.1"}, r"dampening_frac must be a positive number"),
        ("gptq", {"bits": 4}, r"unknown params \['bits'\]"),
        ("llmc-recipe", {}, r"exactly one of params.recipe .* and params.recipe_file"),
        ("llmc-recipe", {"recipe": [{"GPTQModifer": {}}]}, r"recipe entry 0 \(GPTQModifer\)"),
        ("llmc-recipe", {"recipe": [{"A": {}, "B": {}}]}, r"one-key mapping"),
        ("llmc-recipe", {"recipe_file": "/no/such.yaml"}, r"recipe_file /no/such.yaml does not exist"),
        (
            "llmc-recipe",
            {"recipe": [{"QuantizationModifier": {"config_groups": {"g": {"weights": {"group_size": 96}}}}}]},
            r"group size 96 does not fit",
        ),
    ],
)
def test_bad_input_fails_before_any_work(tiny_dir, tmp_path, kind, params, match):
    with pytest.raises(VariantError, match=match):
        make_variant(kind, params).check(ctx(tiny_dir, mode="off"))


def test_flat_and_broken_recipe_files_are_refused(tmp_path, tiny_dir):
    flat = tmp_path / "flat.yaml"
    flat.write_text("GPTQModifier:\n  targets: [Linear]\n  scheme: W4A16\n")
    with pytest.raises(VariantError, match=r"yields no modifiers; .*nested form"):
        make_variant("llmc-recipe", {"recipe_file": str(flat)}).check(ctx(tiny_dir, mode="off"))
    broken = tmp_path / "broken.yaml"
    broken.write_text("quant_stage:\n  quant_modifiers:\n    GPTQModifier: {targets: [Linear\n")
    with pytest.raises(VariantError, match=r"does not parse"):
        make_variant("llmc-recipe", {"recipe_file": str(broken)}).check(ctx(tiny_dir, mode="off"))


def test_a_quantizer_that_fails_midway_leaves_no_cache_entry(tiny_dir, tmp_path):
    # GPTQ with actorder "group" fails inside oneshot on this stack (the gptq kind refuses it up front)
    gptq = {"targets": ["Linear"], "ignore": ["lm_head"], "actorder": "group", "config_groups": {"group_0": GROUPS}}
    v = make_variant("llmc-recipe", {"recipe": [{"GPTQModifier": gptq}], "calibration": cal(4)})
    with pytest.raises(Exception):  # noqa: B017 - whatever llm-compressor raises mid-way
        v.prepare(ctx(tiny_dir, tmp_path / "c"))
    assert [p.name for p in (tmp_path / "c").iterdir() if not p.name.endswith(".lock")] == []


def test_hf_checkpoint_loads_a_compressed_tensors_dir_as_deployed(tiny_dir, tmp_path):
    q = make_variant("llmc-recipe", {"recipe": RTN_RECIPE}).prepare(ctx(tiny_dir, mode="off")).model
    q.save_pretrained(str(tmp_path / "ckpt"), save_compressed=True)
    load_tokenizer(ModelSource(str(tiny_dir))).save_pretrained(str(tmp_path / "ckpt"))
    v = make_variant("hf-checkpoint", {"checkpoint": str(tmp_path / "ckpt")})
    assert v.fingerprint()["checkpoint"]["type"] == "dir" and str(tmp_path) not in repr(v.fingerprint())
    out = v.prepare(ctx(tiny_dir, mode="off"))
    assert out.info["quant_method"] == "compressed-tensors"
    assert out.info["coverage"] == "quantized 294,912 of 294,912 decoder weight parameters (100.0%)"
    assert out.model.model.layers[1].mlp.down_proj.weight.shape == (128, 256)  # de-compressed at load
    assert torch.equal(logits(out.model), logits(q))


def test_a_checkpoint_whose_tensors_do_not_map_onto_the_model_is_refused(tiny_dir, tmp_path):
    """transformers initialises MISSING tensors at random and drops UNEXPECTED ones (an MoE's packed experts
    on transformers 5's fused expert parameters): such a load is an error naming the keys, never a number."""
    from safetensors.torch import load_file, save_file

    q = make_variant("llmc-recipe", {"recipe": RTN_RECIPE}).prepare(ctx(tiny_dir, mode="off")).model
    q.save_pretrained(str(tmp_path / "ckpt"), save_compressed=True)
    load_tokenizer(ModelSource(str(tiny_dir))).save_pretrained(str(tmp_path / "ckpt"))
    file = next((tmp_path / "ckpt").glob("*.safetensors"))
    tensors = load_file(str(file))
    norm = "model.layers.1.post_attention_layernorm.weight"
    tensors[norm.replace("layernorm", "layernorm_elsewhere")] = tensors.pop(norm)
    save_file(tensors, str(file), metadata={"format": "pt"})
    with pytest.raises(
        VariantError, match=r"1 MISSING \(model.layers.1.post_attention_layernorm.weight\); 1 UNEXPECTED"
    ) as exc:
        make_variant("hf-checkpoint", {"checkpoint": str(tmp_path / "ckpt")}).prepare(ctx(tiny_dir, mode="off"))
    assert "does not load as the model it was saved from" in str(exc.value)


def test_hf_checkpoint_without_quantization_config_is_refused(tiny_dir):
    with pytest.raises(VariantError, match=r"has no quantization_config .* not a quantized checkpoint"):
        make_variant("hf-checkpoint", {"checkpoint": str(tiny_dir)}).check(ctx(tiny_dir, mode="off"))


def test_cpu_pin_memory_shim_is_still_needed_and_restored():
    """llm-compressor's AWQ pins cached activations; a CPU-only torch raises. Should this start passing
    without the shim (a fixed llm-compressor), drop the shim."""
    from llmcompressor.pipelines.cache import IntermediatesCache

    from pplgate.models.compat.llmcompressor import cpu_pin_memory_noop

    if torch.accelerator.is_available():
        pytest.skip("the shim is only active without an accelerator")
    cache = IntermediatesCache.from_dataloader([{"input_ids": torch.ones(1, 4, dtype=torch.long)}], torch.device("cpu"))
    original = IntermediatesCache.pin_memory
    with pytest.raises(RuntimeError, match="accelerator"):
        cache.pin_memory(0)
    with cpu_pin_memory_noop():
        cache.pin_memory(0)
    assert IntermediatesCache.pin_memory is original


def test_oneshot_prints_nothing(tiny_dir, capfd):
    make_variant("gptq", {"q_group_size": 64, "calibration": cal(4)}).prepare(ctx(tiny_dir, mode="off"))
    out, err = capfd.readouterr()
    assert out == "" and "INFO" not in err and "METRIC" not in err


def test_missing_llm_compressor_names_the_install_command(tiny_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "llmcompressor", None)  # what a venv without it looks like to import
    with pytest.raises(
        VariantError, match=r"gptq: llm-compressor is not installed .*pip install 'pplgate\[llmcompressor\]'"
    ):
        make_variant("gptq", {"q_group_size": 64, "calibration": cal(4)}).check(ctx(tiny_dir, mode="off"))


def test_gptq_in_fp64_is_the_same_model_on_any_thread_count(tiny_dir, monkeypatch):
    """``quant_dtype: fp64``: the calibration forwards and GPTQ's Hessians and solves in float64 (the lever that
    made the CPU tier's GPTQ the same on an Intel Xeon and an AMD EPYC); the library's float32 is restored."""
    from llmcompressor.modifiers.gptq import base, helpers

    seen = []
    original = base.quantize_weight

    def spy(weights, hessians, *args, **kwargs):
        seen.append((weights.dtype, helpers.GPTQ_PRECISION))
        return original(weights, hessians, *args, **kwargs)

    monkeypatch.setattr(base, "quantize_weight", spy)
    params = {"w_bit": 4, "q_group_size": 64, "sym": False, "quant_dtype": "fp64", "calibration": cal()}
    threads = torch.get_num_threads()
    out = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            prepared = make_variant("gptq", params).prepare(ctx(tiny_dir, mode="off"))
            assert prepared.info["quant_dtype"] == "fp64"
            assert prepared.model.model.layers[0].mlp.down_proj.weight.dtype == torch.float32  # measured in fp32
            out.append(logits(prepared.model))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(out[0], out[1])
    assert seen and set(seen) == {(torch.float64, torch.float64)}
    assert helpers.GPTQ_PRECISION is torch.float32  # restored after the call
    assert make_variant("gptq", params).fingerprint()["quant_dtype"] == "fp64"
    with pytest.raises(VariantError, match="param quant_dtype must be"):
        make_variant("gptq", {**params, "quant_dtype": "fp128"})


def test_a_save_reload_that_changes_the_model_fails_the_build_and_leaves_no_cache_entry(
    tiny_dir, tmp_path, monkeypatch
):
    """Before a quantized model is cached, its reload is compared with the in-memory model on a probe batch."""
    from pplgate.models import llmc

    real = llmc.load_compressed

    def lossy(*args, **kwargs):  # a save/load round trip that loses one module's weights
        model = real(*args, **kwargs)
        model.model.layers[1].mlp.down_proj.weight.data.mul_(0.5)
        return model

    monkeypatch.setattr(llmc, "load_compressed", lossy)
    params = {"w_bit": 4, "q_group_size": 64, "sym": False, "calibration": cal()}
    with pytest.raises(
        VariantError, match="gptq: the saved checkpoint does not reload as the model that was quantized"
    ):
        make_variant("gptq", params).prepare(ctx(tiny_dir, tmp_path / "c"))
    assert not [p for p in (tmp_path / "c").glob("*") if p.is_dir()]  # no cache entry
    monkeypatch.setattr(llmc, "load_compressed", real)
    built = make_variant("gptq", params).prepare(ctx(tiny_dir, tmp_path / "c"))  # a faithful round trip caches
    assert built.origin == "quantized" and [p for p in (tmp_path / "c").glob("*") if p.is_dir()]


def test_the_reload_check_allows_half_precision_rounding_and_nothing_more():
    """fp16/bf16 kernels round a reloaded model's bytes differently; a lost module or random experts do not pass."""
    from pplgate.models.llmc import check_reload

    g = torch.Generator().manual_seed(0)
    before = torch.randn(1, 32, 500, generator=g) * 5
    rounding = before + torch.randn(1, 32, 500, generator=g) * 0.05  # ~1% RMS, a few logits off by ~0.2
    assert "relative RMS 0.00992, top-1 100%" in check_reload(before, rounding, "fp16", "llmc-recipe")
    with pytest.raises(VariantError, match=r"allowed in fp32: max \|dlogit\| <= 1e-4"):
        check_reload(before, rounding, "fp32", "gptq")
    other = torch.randn(1, 32, 500, generator=g) * 5  # another model altogether
    with pytest.raises(VariantError, match=r"relative RMS 1\.4.*top-1 .*allowed in bf16: relative RMS <= 5e-2"):
        check_reload(before, other, "bf16", "gptq")
