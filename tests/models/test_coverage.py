"""What a quantized model holds quantized (models/coverage.py) and library failures as one line (models/failures.py):
real transformers models, real quantizers (rtn, AutoAWQ's WQLinear), no mocks."""

from __future__ import annotations

import pytest
import torch
import transformers as T
from support import need_module, tiny_llama

from pplgate.errors import LibraryError, VariantError
from pplgate.models.coverage import (
    Coverage,
    Grid,
    check_changed,
    checkpoint_grid,
    checkpoint_ignore,
    model_coverage,
    probe_logits,
    weight_digests,
)
from pplgate.models.failures import library_boundary, one_line
from pplgate.models.layers import architecture
from pplgate.models.rtn import rtn_quantize_model

SMALL = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 128}


def _mixtral() -> torch.nn.Module:
    torch.manual_seed(0)
    config = T.MixtralConfig(**SMALL, intermediate_size=96, num_key_value_heads=2, num_local_experts=4)
    return T.AutoModelForCausalLM.from_config(config).eval()


def test_the_coverage_line_counts_parameters_and_names_what_is_left():
    cov = Coverage(quantized=[("a", 999)], missing=[("layers.1.mlp.down_proj.weight", 1)], routers_kept=[("r", 8)])
    assert cov.text() == (
        "quantized 999 of 1,000 decoder weight parameters (99.9%), routers kept (1 weight, 8 parameters), "
        "left unquantized: 1 weight, 1 parameters (layers.1.mlp.down_proj.weight)"
    )  # rounded down: 100.0% only when every eligible parameter is quantized
    with pytest.raises(VariantError, match=r"gptq: 1 eligible decoder weights of this mixtral model were left .*down"):
        cov.check("gptq", "mixtral", fix="do this")
    cov.check("llmc-recipe", "mixtral", allow_missing=True)  # require_all_linears: false
    with pytest.raises(VariantError, match=r"user: nothing was quantized in this llama model"):
        Coverage(missing=[("w", 4)]).check("user", "llama")


def test_a_changed_weight_counts_an_unchanged_one_is_left_an_ignored_one_is_named():
    model = tiny_llama(hidden=32, inter=64)
    base = weight_digests(model)
    with torch.no_grad():
        for layer in model.model.layers:
            for lin in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj, layer.mlp.up_proj):
                lin.weight.mul_(0.5)
    cov = model_coverage(model, base=base, ignore=["re:.*\\.o_proj$", "re:.*gate_proj$"])
    assert [n for n, _ in cov.missing] == ["layers.0.mlp.down_proj.weight", "layers.1.mlp.down_proj.weight"]
    assert (
        len(cov.quantized) == 8
        and len(cov.ignored) == 4
        and "ignored by the entry's ignore list (4 weights" in (cov.text())
    )
    assert model_coverage(model, base=base).missing != cov.missing  # without ignore, o/gate_proj are missing too


def test_fused_experts_on_a_checkpoints_grid_count_float_ones_do_not():
    model = _mixtral()
    assert model_coverage(model, grid=Grid(16, 32)).quantized == []  # float values: more than 16 per group
    rtn_quantize_model(model, 4, 32, True)  # every expert's matrix on a 4-bit grid of 32-wide groups
    cov = model_coverage(model, grid=Grid(16, 32))
    assert not cov.missing and any("experts.gate_up_proj" in n for n, _ in cov.quantized)
    assert "(100.0%), routers kept (2 weights" in cov.text()
    assert model_coverage(model, grid=Grid(16, 16)).quantized  # groups no longer than the levels: the config's word


def test_checkpoint_grid_and_ignore_read_both_formats():
    weights = {"num_bits": 4, "type": "int", "strategy": "group", "group_size": 64}
    ignore = ["lm_head", "re:.*mlp.gate$"]
    ct = {"quant_method": "compressed-tensors", "ignore": ignore, "config_groups": {"g": {"weights": weights}}}
    awq = {"quant_method": "awq", "bits": 4, "group_size": 128, "modules_to_not_convert": ["x"]}
    ct_cfg, awq_cfg = T.LlamaConfig(quantization_config=ct), T.LlamaConfig(quantization_config=awq)
    assert checkpoint_grid(ct_cfg) == Grid(16, 64) and checkpoint_ignore(ct_cfg) == (ignore, False)
    assert checkpoint_grid(awq_cfg) == Grid(16, 128) and checkpoint_ignore(awq_cfg) == (["x"], True)
    assert checkpoint_grid(T.LlamaConfig()) is None
    assert architecture(T.FalconConfig(new_decoder_architecture=True)) == "falcon (new decoder layout)"


def test_autoawqs_packed_modules_count_as_quantized():
    need_module("awq", "pip install --no-deps autoawq==0.2.9")
    from awq.modules.linear.gemm import WQLinear_GEMM

    model = tiny_llama(hidden=64, inter=128)
    layer = model.model.layers[0]
    layer.mlp.down_proj = WQLinear_GEMM.from_linear(layer.mlp.down_proj, 4, 64, init_only=True)
    cov = model_coverage(model)
    assert ("layers.0.mlp.down_proj.weight", 128 * 64) in cov.quantized
    assert len(cov.missing) == 13  # the float Linears: nothing marks them quantized


def test_identical_probe_logits_are_nothing_quantized():
    model = tiny_llama()
    base = probe_logits(model)
    with pytest.raises(VariantError, match=r"awq: nothing was quantized in this llama model: its logits on a 32-token"):
        check_changed(base, probe_logits(model), "awq", "llama")
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight.mul_(0.5)
    check_changed(base, probe_logits(model), "awq", "llama")


def test_a_library_failure_is_one_line_naming_the_architecture_and_the_fix():
    with pytest.raises(LibraryError) as exc:
        with library_boundary("llmc-recipe", "olmo2", "llmcompressor", lambda e: "write mappings"):
            raise ValueError("Found a final incomplete set\n  with matches\tfor keys")
    message = str(exc.value)
    assert message.startswith("llmc-recipe: llmcompressor 0.14") and "\n" not in message
    assert (
        "(this olmo2 model): ValueError: Found a final incomplete set with matches for keys; write mappings" in message
    )
    with pytest.raises(VariantError, match="^ours$"):  # pplgate's own errors pass unchanged
        with library_boundary("gptq", "llama", "llmcompressor", "fix"):
            raise VariantError("ours")
    with pytest.raises(torch.OutOfMemoryError):  # so does running out of memory
        with library_boundary("gptq", "llama", "llmcompressor", "fix"):
            raise torch.OutOfMemoryError("CUDA out of memory")
    assert len(one_line(RuntimeError("x" * 1000))) == 400
