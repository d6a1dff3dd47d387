"""Kinds ``transformers`` (quantization_config at load: bitsandbytes, torchao, quanto, fp8) and ``hqq`` (HQQ's own
API): their refusals, fingerprints and coverage, on tiny random models quantized by the real libraries."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch
import transformers as T
from support import tiny_llama

from pplgate.errors import VariantError
from pplgate.models import hf_quantizer
from pplgate.models.hf_quantizer import device_problem
from pplgate.models.registry import make_variant
from pplgate.models.source import ModelSource
from pplgate.models.variant import ModelContext

NF4 = {"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "nf4"}
INTX4 = {"quant_method": "torchao", "quant_type": "IntxWeightOnlyConfig", "weight_dtype": "int4"}
INTX4_G32 = {**INTX4, "granularity": {"per_group": 32}, "mapping_type": "asymmetric"}


def hfq(qc: dict, **params):
    return make_variant("transformers", {"quantization_config": qc, **params})


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("hfq") / "llama"
    tiny_llama(hidden=64, inter=128).save_pretrained(str(path))
    return path


@pytest.fixture(scope="module")
def moe_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("hfq") / "mixtral"
    torch.manual_seed(0)
    cfg = T.MixtralConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
        vocab_size=101, num_local_experts=4, num_experts_per_tok=2,
    )  # fmt: skip
    T.AutoModelForCausalLM.from_config(cfg).save_pretrained(str(path))
    return path


def ctx(path, device: str = "cpu") -> ModelContext:
    return ModelContext(source=ModelSource(str(path)), device=device)


# -- bad configs: one line naming the fix, before any work ----------------------------------------------
@pytest.mark.parametrize(
    ("qc", "match"),
    [
        (None, r"quantization_config is required: a mapping with quant_method \(bitsandbytes, torchao, quanto, fp8\)"),
        ({"quant_method": "gguf"}, r"unknown quant_method 'gguf'; this kind loads bitsandbytes, torchao, quanto, fp8$"),
        (
            {"quant_method": "hqq"},
            r"unknown quant_method 'hqq'.*HqqConfig route raises NotImplementedError: use kind hqq",
        ),
        ({"quant_method": ["bitsandbytes"]}, r"unknown quant_method \['bitsandbytes'\]; this kind loads bitsa"),
        ({"quant_method": "bnb"}, r"unknown quant_method 'bnb'.*\(write quant_method: bitsandbytes\)"),
        ({**NF4, "bits": 4}, r"BitsAndBytesConfig \(bitsandbytes\) takes no field bits; its fields: load_in_8bit, "),
        (
            {"quant_method": "quanto", "weight": "int4"},
            r"QuantoConfig \(quanto\) takes no field weight; its fields: wei",
        ),
        ({"quant_method": "bitsandbytes"}, r"exactly one of load_in_4bit: true .* and load_in_8bit: true"),
        ({**NF4, "load_in_8bit": True}, r"exactly one of load_in_4bit"),
        ({"quant_method": "torchao"}, r"torchao needs quant_type, the name of a torchao.quantization config class"),
    ],
)
def test_a_bad_config_is_refused_when_the_entry_is_read(qc, match):
    with pytest.raises(VariantError, match=match) as exc:
        make_variant("transformers", {} if qc is None else {"quantization_config": qc})
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize(
    ("qc", "match"),
    [
        ({**INTX4, "quant_type": "Int3Config"}, r"quant_type must name a torchao.quantization config class \(.*Int8"),
        ({**INTX4, "group_size": 64}, r"IntxWeightOnlyConfig takes no field group_size; its fields: weight_dtype, gr"),
        (
            {**INTX4, "granularity": "per_block"},
            r"granularity must be per_tensor, per_row, \{per_axis: N\} or \{per_gr",
        ),
        ({**INTX4, "weight_dtype": "int44"}, r"weight_dtype must name a torch dtype \(e.g. int4, int8, bfloat16\)"),
        ({**INTX4, "mapping_type": "skewed"}, r"mapping_type must be one of symmetric, symmetric_no_clipping_err, asy"),
    ],
)
def test_torchao_fields_are_checked_against_the_config_class(llama_dir, qc, match):
    variant = hfq(qc)
    with pytest.raises(VariantError, match=r"^transformers: quantization_config \(torchao\): " + match):
        variant.check(ctx(llama_dir))


def test_a_missing_library_names_the_extra(monkeypatch, llama_dir):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "optimum" else real(name, *a))
    variant = hfq({"quant_method": "quanto", "weights": "int4"})
    with pytest.raises(
        VariantError, match=r"needs optimum-quanto, which is not installed: pip install 'pplgate\[quanto\]'"
    ):
        variant.check(ctx(llama_dir))


def test_methods_refused_on_a_device_they_do_not_run_on(llama_dir):
    with pytest.raises(
        VariantError, match=r"quant_method fp8 runs on cuda only, not on cpu: measure it in a profile wi"
    ):
        hfq({"quant_method": "fp8"}).check(ctx(llama_dir))
    int4 = hfq({"quant_method": "torchao", "quant_type": "Int4WeightOnlyConfig", "group_size": 64})
    with pytest.raises(
        VariantError, match=r"Int4WeightOnlyConfig has no CPU kernel .* IntxWeightOnlyConfig, weight_dt"
    ):
        int4.check(ctx(llama_dir))


def test_torchao_int4_on_cuda_needs_its_kernel_and_dtype():
    plain = hfq({"quant_method": "torchao", "quant_type": "Int4WeightOnlyConfig"}).config()
    if importlib.util.find_spec("mslk") is None:
        assert "needs mslk, which is not installed: pip install mslk-cuda, or write int4_packing_format: tile" in (
            device_problem("torchao", plain, "cuda", "bf16") or ""
        )
    tiled = {
        "quant_method": "torchao",
        "quant_type": "Int4WeightOnlyConfig",
        "int4_packing_format": "tile_packed_to_4d",
    }
    cfg = hfq(tiled).config()
    assert device_problem("torchao", cfg, "cuda", "bf16") is None
    assert device_problem("torchao", cfg, "cuda", "fp16") == (
        "torchao's int4 packing tile_packed_to_4d runs in bfloat16 only: write dtype: bf16 (not fp16)"
    )


@pytest.mark.skipif(importlib.util.find_spec("kernels") is not None, reason="the kernels package is installed")
def test_fp8_through_transformers_needs_the_kernels_package():
    problem = device_problem("fp8", hfq({"quant_method": "fp8"}).config(), "cuda", "bf16")
    assert problem.startswith("transformers' FP8 Linear loads its Triton kernel from the hub through the kernels")
    assert problem.endswith("quant_method: torchao, quant_type: Float8DynamicActivationFloat8WeightConfig")


def test_bitsandbytes_without_its_native_library_on_cuda(monkeypatch):
    import bitsandbytes.cextension as ce

    cfg = hfq(NF4).config()
    mock = ce.ErrorHandlerMockBNBNativeLibrary("libbitsandbytes_cuda130.so: cannot open shared object file")
    monkeypatch.setattr(ce, "lib", mock)
    problem = device_problem("bitsandbytes", cfg, "cuda", "fp16")
    assert problem.startswith("bitsandbytes 0.50.2 has no CUDA backend for this torch (CUDA ")
    assert "libbitsandbytes_cuda130.so: cannot open" in problem and problem.endswith("with kernels for it")
    assert device_problem("bitsandbytes", cfg, "cpu", "fp32") is None  # bitsandbytes' CPU path needs no library


# -- fingerprints: the library version and the config as transformers resolves it ---------------------
def test_the_fingerprint_holds_the_version_and_every_resolved_field():
    fp = hfq(NF4).fingerprint()
    assert fp["libraries"] == {"bitsandbytes": "0.50.2", "transformers": T.__version__}
    qc = fp["quantization_config"]
    assert qc["quant_method"] == "bitsandbytes" and qc["bnb_4bit_quant_type"] == "nf4"
    assert qc["bnb_4bit_compute_dtype"] == "float32" and qc["bnb_4bit_use_double_quant"] is False  # defaults written
    assert hfq({**NF4, "bnb_4bit_use_double_quant": True}).fingerprint() != fp
    ao = hfq(INTX4_G32).fingerprint()["quantization_config"]["quant_type"]["default"]
    assert ao["_type"] == "IntxWeightOnlyConfig"
    assert ao["_data"]["granularity"] == {"_type": "PerGroup", "_version": 1, "_data": {"group_size": 32}}
    assert "intx_packing_format" in ao["_data"]  # a default the entry did not write
    assert hfq({**INTX4_G32, "mapping_type": "symmetric"}).fingerprint() != hfq(INTX4_G32).fingerprint()


# -- measured as the library runs it, every decoder weight covered ---------------------------------------
@pytest.mark.parametrize(
    ("qc", "module", "weight"),
    [
        (NF4, "Linear4bit", "Params4bit"),
        ({"quant_method": "bitsandbytes", "load_in_8bit": True}, "Linear8bitLt", "Int8Params"),
        ({"quant_method": "torchao", "quant_type": "Int8WeightOnlyConfig"}, "Linear", "Int8Tensor"),
        (INTX4_G32, "Linear", "IntxUnpackedToInt8Tensor"),
    ],
)
def test_the_model_is_the_librarys_own_and_fully_covered(llama_dir, qc, module, weight):
    prepared = hfq(qc).prepare(ctx(llama_dir))
    q = prepared.model.model.layers[0].self_attn.q_proj
    assert type(q).__name__ == module and type(q.weight).__name__ == weight
    assert prepared.info["coverage"] == "quantized 73,728 of 73,728 decoder weight parameters (100.0%)"
    assert prepared.info["cache"].startswith("not cached") and prepared.origin == "quantized"
    logits = prepared.model(torch.arange(8)[None]).logits
    assert torch.isfinite(logits).all()


def test_modules_the_config_keeps_are_ignored_and_keeping_all_is_nothing_quantized(llama_dir):
    kept = hfq({**NF4, "llm_int8_skip_modules": ["lm_head", "down_proj"]}).prepare(ctx(llama_dir))
    cov = kept.info["coverage"]
    assert "ignored by the config's modules_to_not_convert (2 weights, 16,384 parameters)" in cov, cov
    everything = ["lm_head", "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    with pytest.raises(VariantError, match=r"^transformers: nothing was quantized in this llama model"):
        hfq({**NF4, "llm_int8_skip_modules": everything}).prepare(ctx(llama_dir))


def test_fused_experts_the_library_leaves_in_float_are_refused(moe_dir):
    with pytest.raises(
        VariantError, match=r"^transformers: 4 eligible decoder weights of this mixtral model were left"
    ):
        hfq(NF4).prepare(ctx(moe_dir))
    with pytest.raises(VariantError, match=r"^hqq: 4 eligible decoder weights of this mixtral model were left unquant"):
        make_variant("hqq", {"group_size": 32}).prepare(ctx(moe_dir))


def test_a_gguf_source_is_written_as_a_float_checkpoint_first(tmp_path):
    model = tiny_llama(hidden=64, inter=128)
    model.config.quantization_config = {"quant_method": "gguf"}  # what a GGUF load leaves in the config
    folder = hf_quantizer.write_float_checkpoint(model, tmp_path)
    loaded = T.AutoModelForCausalLM.from_pretrained(folder)
    assert getattr(loaded.config, "quantization_config", None) is None
    assert torch.equal(loaded.model.layers[1].mlp.down_proj.weight, model.model.layers[1].mlp.down_proj.weight)


# -- hqq -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"nbits": 5}, r"hqq: param nbits must be one of 1, 2, 3, 4, 8, got 5"),
        ({"group_size": 12}, r"hqq: param group_size must be a positive multiple of 8, got 12"),
        ({"backend": "aten"}, r"hqq: param backend must be pytorch or pytorch_compile, got 'aten'"),
        ({"bits": 4}, r"variant kind 'hqq': unknown params \['bits'\]; known: nbits, group_size, axis, backend, dtype"),
    ],
)
def test_hqq_params(params, match):
    with pytest.raises(VariantError, match=match):
        make_variant("hqq", params)


def test_hqq_group_size_must_divide_the_widths(llama_dir):
    with pytest.raises(VariantError, match=r"hqq group_size 48 does not fit .*: hidden_size .* = 64 is not a multipl"):
        make_variant("hqq", {"group_size": 48}).check(ctx(llama_dir))


def test_hqq_measures_hqqlinear_with_the_resolved_config_in_its_fingerprint(llama_dir):
    variant = make_variant("hqq", {"group_size": 32})
    prepared = variant.prepare(ctx(llama_dir))
    q = prepared.model.model.layers[1].mlp.down_proj
    assert type(q).__name__ == "HQQLinear" and q.W_q.dtype == torch.uint8
    assert prepared.info["coverage"] == "quantized 73,728 of 73,728 decoder weight parameters (100.0%)"
    assert math.isfinite(prepared.model(torch.arange(8)[None]).logits.sum().item())
    fp = variant.fingerprint()
    assert fp["hqq"] == "0.2.8.post1" and fp["backend"] == "pytorch"
    assert fp["quant_config"]["weight_quant_params"] == {
        "nbits": 4, "channel_wise": True, "group_size": 32, "optimize": True, "round_zero": True, "axis": 1,
        "view_as_float": False,
    }  # fmt: skip
