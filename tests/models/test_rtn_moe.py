"""rtn on mixture-of-experts models: transformers 5 stores experts as fused 3-D tensors, not Linears.
Tiny random models from the real config classes; every expert is quantized as if it were a Linear."""

from __future__ import annotations

import pytest
import torch
import transformers as T

from pplgate.errors import VariantError
from pplgate.models.layers import decoder_weights
from pplgate.models.rtn import pseudo_quantize_tensor, rtn_quantize_model

SMALL = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 128}
CONFIGS = {
    "mixtral": lambda: T.MixtralConfig(**SMALL, intermediate_size=96, num_key_value_heads=2, num_local_experts=4),
    "qwen2_moe": lambda: T.Qwen2MoeConfig(
        **SMALL, moe_intermediate_size=32, shared_expert_intermediate_size=64, num_key_value_heads=2, num_experts=4
    ),
    "qwen3_moe": lambda: T.Qwen3MoeConfig(
        **SMALL, moe_intermediate_size=32, num_key_value_heads=2, num_experts=4, num_experts_per_tok=2, head_dim=16
    ),
    "deepseek_v3": lambda: T.DeepseekV3Config(
        **SMALL,
        intermediate_size=96,
        moe_intermediate_size=32,
        n_routed_experts=4,
        num_experts_per_tok=2,
        first_k_dense_replace=1,
        q_lora_rank=32,
        kv_lora_rank=32,
        qk_rope_head_dim=16,
        qk_nope_head_dim=16,
        v_head_dim=16,
        n_group=1,
        topk_group=1,
    ),  # fmt: skip
    "gpt_oss": lambda: T.GptOssConfig(
        **SMALL, intermediate_size=32, num_key_value_heads=2, num_local_experts=4, head_dim=16
    ),  # experts stored [experts, in, out]
}


def _model(arch: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return T.AutoModelForCausalLM.from_config(CONFIGS[arch]()).eval()


@pytest.mark.parametrize("arch", sorted(CONFIGS))
def test_rtn_quantizes_every_expert_as_a_linear_and_keeps_the_routers(arch):
    model = _model(arch)
    weights, kept = decoder_weights(model)
    experts = [w for w in weights if w.experts]
    assert experts and kept  # an MoE: fused expert tensors and routers
    before = {w.name: [m.clone() for m in w.matrices()] for w in weights}
    routers = {w.name: (w.param, w.param.detach().clone()) for w in kept}
    ids = torch.randint(0, 128, (1, 16))
    with torch.no_grad():
        base = model(ids).logits
    stats = rtn_quantize_model(model, 4, 16, True)
    assert stats["n_expert_tensors"] == len(experts) and stats["n_linears"] == len(weights) - len(experts)
    assert (
        stats["coverage"].startswith("quantized ")
        and " decoder weight parameters (100.0%), routers kept (" in stats["coverage"]
    )
    for w in weights:  # each matrix (an expert's, or a Linear's) exactly its own RTN, along its input dimension
        for old, new in zip(before[w.name], w.matrices(), strict=True):
            assert torch.equal(new, pseudo_quantize_tensor(old, 4, 16, True)[0]), w.name
    for name, (param, before_router) in routers.items():
        assert torch.equal(param, before_router), name
    with torch.no_grad():
        assert not torch.equal(model(ids).logits, base)  # the quantized model is not the float one


def test_a_model_rtn_leaves_unchanged_is_an_error_not_a_number():
    model = _model("mixtral")
    for w in decoder_weights(model)[0]:
        w.param.data.zero_()  # every decoder weight already on any grid
    with pytest.raises(VariantError, match="rtn changed no weight of MixtralForCausalLM"):
        rtn_quantize_model(model, 4, 16, True)


def test_an_expert_layout_it_cannot_tell_is_refused():
    """A fused tensor whose class carries no layout flag and whose dims cannot tell in from out."""
    model = _model("qwen3_moe")
    experts = model.model.layers[0].mlp.experts
    del experts.is_transposed  # the flag transformers' experts decorator sets
    experts.gate_up_proj = torch.nn.Parameter(torch.randn(4, 64, 64))  # [experts, 64, 64] with hidden 64
    with pytest.raises(VariantError, match="cannot tell whether the fused expert tensor"):
        decoder_weights(model)
