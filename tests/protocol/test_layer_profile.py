"""The per-module error profile on real tiny models (transformers config classes, seeded random weights):
dense and mixture-of-experts layouts, the same inputs for both models, and every module not measured
named with its reason."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import transformers as T
from support import random_ids, tiny_gpt2, tiny_llama
from transformers.pytorch_utils import Conv1D

from pplgate.models.rtn import pseudo_quantize_tensor, rtn_quantize_model
from pplgate.protocol.layers import layer_errors, layer_profile, measured_modules, summarize

SMALL = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 128}
MOE = {
    "mixtral": lambda: T.MixtralConfig(**SMALL, intermediate_size=96, num_key_value_heads=2, num_local_experts=4),
    "qwen2_moe": lambda: T.Qwen2MoeConfig(
        **SMALL, moe_intermediate_size=32, shared_expert_intermediate_size=64, num_key_value_heads=2, num_experts=4
    ),
}
DENSE = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"]
DENSE += ["mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]


def _quantized(model: torch.nn.Module, group: int = 16) -> torch.nn.Module:
    out = copy.deepcopy(model)
    rtn_quantize_model(out, 4, group, True)
    return out


def test_a_dense_model_has_one_error_per_linear_named_by_layer():
    ref = tiny_llama(hidden=64, inter=128, layers=3)
    errors = layer_errors(ref, _quantized(ref), random_ids(64, 101))
    assert list(errors) == [f"layers.{i}.{m}" for i in range(3) for m in sorted(DENSE)]
    assert all(0.01 < v < 0.5 for v in errors.values()), errors
    assert layer_errors(ref, copy.deepcopy(ref), random_ids(64, 101)) == dict.fromkeys(errors, 0.0)


def test_each_module_gets_the_references_inputs_so_errors_do_not_accumulate():
    ref = tiny_llama(hidden=64, inter=128, layers=3)
    ids = random_ids(64, 101)
    every = layer_errors(ref, _quantized(ref), ids)
    last_only = copy.deepcopy(ref)
    last_only.model.layers[2] = _quantized(ref).model.layers[2]
    alone = layer_errors(ref, last_only, ids)
    for m in DENSE:  # layer 2 alone or after two quantized layers: the same inputs, the same numbers
        assert alone[f"layers.2.{m}"] == every[f"layers.2.{m}"], m
        assert alone[f"layers.0.{m}"] == alone[f"layers.1.{m}"] == 0.0


@pytest.mark.parametrize("arch", sorted(MOE))
def test_fused_experts_are_measured_one_by_one_and_summarized_per_layer(arch):
    torch.manual_seed(0)
    ref = T.AutoModelForCausalLM.from_config(MOE[arch]()).eval()
    model = _quantized(ref)
    experts = model.model.layers[1].mlp.experts
    with torch.no_grad():  # expert 2 of layer 1 left in full precision
        for p in experts.parameters():
            if p.dim() == 3:
                p[2] = dict(ref.named_parameters())[f"model.layers.1.mlp.experts.{_pname(experts, p)}"][2]
    profile = layer_profile(ref, model, random_ids(48, 128))
    assert profile.unmeasured == {} and profile.n_tokens == 48 and profile.time_s > 0
    per_expert = {n: v for n, v in profile.errors.items() if ".mlp.experts." in n}
    assert sorted(per_expert) == [f"layers.{i}.mlp.experts.{e}" for i in range(2) for e in range(4)]
    assert per_expert["layers.1.mlp.experts.2"] == 0.0
    assert all(0.01 < v < 0.5 for n, v in per_expert.items() if n != "layers.1.mlp.experts.2"), per_expert
    summary = summarize(profile.errors)
    assert not any(".mlp.experts." in n and n.rsplit(".", 1)[1].isdigit() for n in summary)
    others = [v for n, v in per_expert.items() if n.startswith("layers.1.") and not n.endswith(".2")]
    assert summary["layers.1.mlp.experts.max"] == pytest.approx(max(others), rel=1e-3)
    assert summary["layers.1.mlp.experts.mean"] == pytest.approx(sum(others) / 4, rel=1e-3)


def _pname(mod: torch.nn.Module, p: torch.Tensor) -> str:
    return next(n for n, q in mod.named_parameters(recurse=False) if q is p)


def test_every_module_not_measured_is_named_with_its_reason():
    ref = tiny_llama(hidden=64, inter=128, layers=2)
    model = _quantized(tiny_llama(hidden=64, inter=128, layers=3))  # one layer more than the reference
    model.model.layers[0].mlp.down_proj = torch.nn.Linear(96, 64, bias=False)  # cannot take the inputs
    for m in (ref, model):  # a Linear the forward never calls
        m.model.layers[1].mlp.spare = torch.nn.Linear(8, 8)
    profile = layer_profile(ref, model, random_ids(32, 101))
    nan = {n for n, v in profile.errors.items() if math.isnan(v)}
    assert nan == set(profile.unmeasured)
    assert profile.unmeasured["layers.0.mlp.down_proj"].startswith("its call failed: RuntimeError")
    assert profile.unmeasured["layers.1.mlp.spare"].startswith("not called by the batch")
    assert {n for n, why in profile.unmeasured.items() if why.startswith("in the model only")} == {
        f"layers.2.{m}" for m in DENSE
    }
    assert math.isfinite(profile.errors["layers.0.mlp.up_proj"]) and len(profile.errors) == 7 * 3 + 1
    assert math.isnan(summarize(profile.errors)["layers.0.mlp.down_proj"])


def test_a_model_in_another_dtype_gets_the_inputs_in_its_dtype():
    ref = tiny_llama(hidden=64, inter=128, layers=2)
    errors = layer_errors(ref, _quantized(ref).to(torch.bfloat16), random_ids(32, 101))
    assert all(0.01 < v < 0.5 for v in errors.values()), errors


def test_the_models_module_of_the_same_name_is_measured_whatever_its_class():
    ref = tiny_llama(hidden=64, inter=128, layers=2)
    model = _quantized(ref)
    ids = random_ids(32, 101)
    linear = layer_errors(ref, model, ids)
    down = model.model.layers[1].mlp.down_proj  # the same weights in another module class (as a kernel's is)
    kernel = Conv1D(down.out_features, down.in_features)
    with torch.no_grad():
        kernel.weight.copy_(down.weight.T)
        kernel.bias.zero_()
    model.model.layers[1].mlp.down_proj = kernel
    profile = layer_profile(ref, model, ids)
    assert profile.unmeasured == {} and profile.errors.keys() == linear.keys()
    assert profile.errors["layers.1.mlp.down_proj"] == pytest.approx(linear["layers.1.mlp.down_proj"], rel=1e-5)


def test_gpt2s_conv1d_modules_are_measured():
    ref = tiny_gpt2()
    model = copy.deepcopy(ref)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, Conv1D):  # weight [in, out]
                mod.weight.copy_(pseudo_quantize_tensor(mod.weight.T, 4, 16, True)[0].T)
    errors = layer_errors(ref, model, random_ids(32, 101))
    names = ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"]
    assert list(errors) == [f"layers.{i}.{m}" for i in range(2) for m in names]
    assert all(0.01 < v < 0.5 for v in errors.values()), errors


def test_summarize_keeps_four_significant_digits():
    assert summarize({"layers.0.mlp.down_proj": 0.0123456, "layers.1.mlp.down_proj": 123456.0}) == {
        "layers.0.mlp.down_proj": 0.01235,
        "layers.1.mlp.down_proj": 123500.0,
    }
    assert summarize({"lm_head": math.inf, "layers.0.x": 0.0}) == {"layers.0.x": 0.0, "lm_head": math.inf}


def test_measured_modules_are_the_decoder_layers_only():
    names = measured_modules(tiny_llama(hidden=64, inter=128, layers=2))
    assert "lm_head" not in str(list(names)) and len(names) == 14
    two = torch.nn.ModuleDict({"text": tiny_llama(layers=1), "vision": tiny_llama(layers=2)})
    names = measured_modules(two)  # the same short names twice: the full names, never one overwriting the other
    assert len(names) == 21 and "text.model.layers.0.mlp.down_proj" in names and "layers.1.mlp.down_proj" in names
