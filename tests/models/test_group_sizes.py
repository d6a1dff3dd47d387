"""Issue #25: an impossible group size lists the valid ones (power-of-two divisors of every decoder Linear's
in_features, plus the kind's no-groups setting), for rtn, awq and gptq, before any weight is loaded (a
SmolLM2-135M-shaped config: hidden 576, intermediate 1536; only config.json on disk)."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import LlamaConfig

from pplgate.errors import VariantError
from pplgate.models.layers import group_size_fix, valid_group_sizes
from pplgate.models.registry import make_variant
from pplgate.models.source import ModelSource
from pplgate.models.variant import ModelContext

SMOLLM2 = {"hidden_size": 576, "intermediate_size": 1536, "num_attention_heads": 9, "num_key_value_heads": 3}


@pytest.fixture(scope="module")
def smollm2_shaped(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("cfg") / "smollm2-shaped"
    LlamaConfig(**SMOLLM2, num_hidden_layers=1, vocab_size=64).save_pretrained(d)
    return d


def test_valid_sizes_are_the_power_of_two_divisors_of_every_width():
    assert valid_group_sizes(LlamaConfig(**SMOLLM2)) == [64, 32, 16]
    assert valid_group_sizes(LlamaConfig(hidden_size=4096, intermediate_size=11008)) == [256, 128, 64, 32, 16]
    assert valid_group_sizes(LlamaConfig(hidden_size=100, intermediate_size=250, num_attention_heads=4)) == []
    assert group_size_fix(LlamaConfig(**SMOLLM2)) == (
        "valid group sizes for in_features 576, 1536: 64, 32, 16, or -1 (whole row)"
    )
    assert group_size_fix(LlamaConfig(hidden_size=100, intermediate_size=250, num_attention_heads=4), None) == (
        "valid group sizes for in_features 100, 250: none"
    )


@pytest.mark.parametrize(
    ("kind", "params", "message"),
    [
        ("rtn", {"q_group_size": 128}, "rtn q_group_size 128 does not fit"),
        ("awq", {"q_group_size": 128}, "awq: q_group_size 128 does not fit"),
        ("gptq", {"q_group_size": 128}, "gptq: group size 128 does not fit"),
    ],
)
def test_an_impossible_group_size_lists_the_valid_ones(smollm2_shaped, tmp_path, kind, params, message):
    if kind == "awq":
        pytest.importorskip("awq")
    if kind == "gptq":
        pytest.importorskip("llmcompressor")
    ctx = ModelContext(source=ModelSource(str(smollm2_shaped)), device="cpu", cache_dir=str(tmp_path), cache_mode="off")
    with pytest.raises(VariantError) as info:
        make_variant(kind, params).check(ctx)
    text = str(info.value)
    assert text.startswith(message) and "hidden_size (q/k/v/gate/up in_features) = 576 is not a multiple" in text
    whole = "-1 (per channel)" if kind == "gptq" else "-1 (whole row)"
    assert f"valid group sizes for in_features 576, 1536: 64, 32, 16, or {whole}" in text
    assert "\n" not in text
