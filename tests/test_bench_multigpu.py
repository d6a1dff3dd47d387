"""bench/multigpu on CPU: split-independent seeded materialisation, device maps, and the layer pipeline
scoring exactly what pplgate's engine scores (the GPU runs of big_model.py rely on both)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from support import random_ids, tiny_llama

from pplgate.protocol.engine import score_windows

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench" / "multigpu"))
big_model = pytest.importorskip("big_model")
layer_pipeline = pytest.importorskip("layer_pipeline")


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_materialisation_does_not_depend_on_the_split_or_the_order():
    cfg = big_model.make_config("tiny", 101)
    whole = big_model.empty_model(cfg)
    big_model.materialise(whole, {"": "cpu"}, dtype=torch.float32, seed=3)
    split = big_model.empty_model(cfg)
    dmap = big_model.balanced_map(cfg, ["cpu", "cpu", "cpu"])  # per-layer entries, three "stages"
    names = [n for n, _ in split.named_parameters()][::-1]  # made in the reverse order
    big_model.materialise(split, dmap, dtype=torch.float32, seed=3, names=names)
    a, b = _state(whole), _state(split)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    one = big_model.empty_model(cfg)  # one layer alone: the same values as inside the whole model
    big_model.materialise(one, {"": "cpu"}, dtype=torch.float32, seed=3, names=["model.layers.2.mlp.up_proj.weight"])
    assert torch.equal(one.model.layers[2].mlp.up_proj.weight, a["model.layers.2.mlp.up_proj.weight"])
    other = big_model.empty_model(cfg)
    big_model.materialise(other, {"": "cpu"}, dtype=torch.float32, seed=4)
    assert not torch.equal(other.model.layers[0].mlp.up_proj.weight, a["model.layers.0.mlp.up_proj.weight"])


def test_materialised_values_follow_the_llama_init_and_the_rotary_buffer_is_real():
    cfg = big_model.make_config("tiny", 101)
    m = big_model.empty_model(cfg)
    big_model.materialise(m, {"": "cpu"}, dtype=torch.float32)
    assert all(t.device.type == "cpu" for t in [*m.parameters(), *m.buffers()])
    assert torch.equal(m.model.norm.weight, torch.ones(cfg.hidden_size))
    assert torch.equal(m.model.layers[1].input_layernorm.weight, torch.ones(cfg.hidden_size))
    w = m.model.layers[0].mlp.down_proj.weight
    assert abs(float(w.std()) - 0.02) < 0.002 and abs(float(w.mean())) < 0.002
    reference = type(m.model.rotary_emb)(config=cfg)  # what a normal (non-meta) build computes
    assert torch.equal(m.model.rotary_emb.inv_freq, reference.inv_freq)


@pytest.mark.parametrize("n", [2, 4])
def test_balanced_map_of_the_70b_shape(n):
    cfg = big_model.make_config("70b", 32000)
    devices = [f"cuda:{i}" for i in range(n)]
    dmap = big_model.balanced_map(cfg, devices)
    per_device = {d: sum(v == d for k, v in dmap.items() if k.startswith("model.layers.")) for d in devices}
    assert per_device == {d: 80 // n for d in devices}
    assert dmap["model.embed_tokens"] == "cuda:0" and dmap["lm_head"] == dmap["model.norm"] == devices[-1]
    assert big_model.device_of("model.layers.79.mlp.up_proj.weight", dmap) == devices[-1]
    assert big_model.device_of("model.layers.7.self_attn.q_proj.weight", dmap) == "cuda:0"


def test_auto_map_of_the_70b_shape_on_meta_fits_two_80gb_gpus():
    pytest.importorskip("accelerate")
    model = big_model.empty_model(big_model.make_config("70b", 32000))
    assert sum(p.numel() for p in model.parameters()) == 68_976_648_192
    dmap = big_model.auto_map(model, {0: 72 << 30, 1: 72 << 30})
    layers = [int(k.split(".")[2]) for k, v in dmap.items() if k.startswith("model.layers.") and v == "cuda:0"]
    assert set(dmap.values()) == {"cuda:0", "cuda:1"} and 35 <= len(layers) <= 45
    with pytest.raises(SystemExit, match="does not fit"):
        big_model.auto_map(model, {0: 40 << 30, 1: 40 << 30})


@pytest.mark.parametrize(
    "stages,batch_size",
    [([[0], [1, 2], [3]], 2), ([[0, 1], [2, 3]], 3), ([[0, 1, 2, 3]], 4), ([[0], [1], [2], [3]], 1)],
)
def test_pipeline_scores_exactly_what_the_engine_scores(stages, batch_size):
    model = tiny_llama(layers=4, vocab=101, max_pos=64, seed=1)
    windows = random_ids(7 * 33, 101, seed=2).view(7, 33)  # 7 windows: the last batch is partial
    plain = score_windows(model, windows, batch_size=batch_size)
    piped = layer_pipeline.pipelined_window_nlls(model, windows, batch_size=batch_size, stages=stages)
    assert piped == plain


def test_pipeline_rejects_stages_that_skip_a_layer():
    model = tiny_llama(layers=4, vocab=101, max_pos=64)
    with pytest.raises(ValueError, match="cover layers 0..3"):
        layer_pipeline.pipelined_window_nlls(model, random_ids(66, 101).view(2, 33), batch_size=1, stages=[[0, 1], [3]])


def test_even_stages():
    assert layer_pipeline.even_stages(80, 4) == [list(range(i * 20, (i + 1) * 20)) for i in range(4)]
    assert layer_pipeline.even_stages(5, 3) == [[0, 1], [2, 3], [4]]
    assert layer_pipeline.even_stages(2, 4) == [[0], [1]]
