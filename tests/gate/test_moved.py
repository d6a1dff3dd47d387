"""moved(): which modules' output error moved against the record, in a few merged lines."""

from __future__ import annotations

import math

import pytest

from pplgate.gate.layers import moved

TYPES = ("mlp.down_proj", "mlp.up_proj", "self_attn.q_proj")


def _profile(layers: int = 6, value: float = 0.03) -> dict[str, float]:
    return {f"layers.{i}.{m}": value for i in range(layers) for m in TYPES}


def test_nothing_moved_is_an_empty_list():
    assert moved(_profile(), _profile()) == []
    assert moved(_profile(), {n: v * 1.09 for n, v in _profile().items()}) == []  # within 10%
    assert moved({"layers.0.x": 0.0}, {"layers.0.x": 5e-5}) == []  # below the floor


def test_one_module_moved_reads_its_layer_numbers_and_ratio():
    now = _profile() | {"layers.12.mlp.down_proj": 0.094}
    assert moved(_profile() | {"layers.12.mlp.down_proj": 0.031}, now) == [
        "layer 12 mlp.down_proj: output error 0.031 -> 0.094 (x3.03)"
    ]


def test_consecutive_layers_of_one_type_are_one_line_and_gaps_split_it():
    now = _profile(8)
    for i in (2, 3, 4, 6):
        now[f"layers.{i}.mlp.down_proj"] = 0.09
    assert moved(_profile(8), now) == [
        "layers 2-4 mlp.down_proj: output error 0.03 -> 0.09 (mean of 3 layers, x3)",
        "layer 6 mlp.down_proj: output error 0.03 -> 0.09 (x3)",
    ]


def test_moves_in_opposite_directions_are_not_merged():
    now = _profile() | {"layers.1.mlp.up_proj": 0.09, "layers.2.mlp.up_proj": 0.01}
    assert sorted(moved(_profile(), now)) == [
        "layer 1 mlp.up_proj: output error 0.03 -> 0.09 (x3)",
        "layer 2 mlp.up_proj: output error 0.03 -> 0.01 (x0.333)",
    ]


def test_a_layer_whose_every_module_moved_is_one_line_and_so_are_neighbours():
    now = _profile() | {f"layers.{i}.{m}": 0.0 for i in (3, 4) for m in TYPES}
    assert moved(_profile(), now) == ["layers 3-4 every module (3): output error 0.03 -> 0 (mean of 2 layers, x0)"]


def test_the_largest_ratio_comes_first_then_the_largest_difference():
    rec = _profile() | {"layers.0.mlp.up_proj": 0.01, "layers.5.mlp.up_proj": 0.1}
    now = rec | {"layers.0.mlp.up_proj": 0.05, "layers.5.mlp.up_proj": 0.3, "layers.3.mlp.down_proj": 0.09}
    assert [line.split(":")[0] for line in moved(rec, now)] == [
        "layer 0 mlp.up_proj",  # x5
        "layer 5 mlp.up_proj",  # x3, +0.2
        "layer 3 mlp.down_proj",  # x3, +0.06
    ]


def test_a_non_finite_error_is_the_largest_move():
    now = _profile() | {"layers.0.mlp.up_proj": 1.0, "layers.4.self_attn.q_proj": math.inf}
    assert moved(_profile(), now)[0] == "layer 4 self_attn.q_proj: output error 0.03 -> inf"


def test_top_limits_the_moves_and_says_how_many_more():
    now = _profile() | {f"layers.{i}.mlp.up_proj": 0.03 * (i + 2) for i in (0, 2, 4)}
    lines = moved(_profile(), now, top=2)
    assert lines == [
        "layer 4 mlp.up_proj: output error 0.03 -> 0.18 (x6)",
        "layer 2 mlp.up_proj: output error 0.03 -> 0.12 (x4)",
        "and 1 more moved",
    ]
    with pytest.raises(ValueError, match="top must be at least 1"):
        moved(_profile(), now, top=0)


def test_modules_missing_on_either_side_are_named_never_dropped():
    rec = _profile(4) | {"lm_head": 0.01}
    now = {n: v for n, v in _profile(4).items() if not n.endswith("q_proj")}
    now |= {"layers.0.mlp.experts.max": 0.1, "layers.1.mlp.up_proj": math.nan, "layers.3.mlp.up_proj": 0.3}
    assert moved(rec, now, top=1) == [
        "layer 3 mlp.up_proj: output error 0.03 -> 0.3 (x10)",
        "lm_head: in the record, missing now",
        "layers 0-3 self_attn.q_proj: in the record, missing now",
        "layer 0 mlp.experts.max: new, not in the record",
        "layer 1 mlp.up_proj: not measured",
    ]
