"""The shard assignment (pure): parsing K/N, longest-processing-time-first balance, order independence."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pplgate.gate.shard import ShardSpec, assign, balance, module_of


@pytest.mark.parametrize("text,expected", [("1/2", (1, 2)), (" 2 / 2 ", (2, 2)), ("1/1", (1, 1)), ("7/12", (7, 12))])
def test_parse(text, expected):
    spec = ShardSpec.parse(text)
    assert (spec.index, spec.count) == expected
    assert str(spec) == f"{expected[0]}/{expected[1]}"


@pytest.mark.parametrize("text", ["", "1", "0/2", "3/2", "1/0", "-1/2", "a/b", "1/2/3", "1.0/2"])
def test_parse_rejects_with_the_form(text):
    with pytest.raises(ValueError, match="--pplgate-shard") as exc:
        ShardSpec.parse(text)
    assert "1/" in str(exc.value)  # an example of the right form


def test_balance_longest_first_and_ties_by_name():
    # heaviest first: a(3) -> 1; b(2) -> 2 (loads 3, 2); c(2) -> 2 (3, 4); d(1) -> 1 (4, 4)
    out = balance({"d": 1, "c": 2, "b": 2, "a": 3}, 2)
    assert out == {"a": 1, "b": 2, "c": 2, "d": 1}
    loads = [sum(w for g, w in {"a": 3, "b": 2, "c": 2, "d": 1}.items() if out[g] == k) for k in (1, 2)]
    assert loads == [4, 4]


def test_balance_independent_of_the_order_of_the_groups():
    weights = {f"model-{i}": (i * 7) % 5 + 1 for i in range(9)}
    results = set()
    for perm in itertools.islice(itertools.permutations(weights.items()), 200):
        results.add(tuple(sorted(balance(dict(perm), 3).items())))
    shuffled = list(weights.items())
    random.Random(0).shuffle(shuffled)
    results.add(tuple(sorted(balance(dict(shuffled), 3).items())))
    assert len(results) == 1


def test_more_shards_than_groups_leaves_shards_empty():
    assert balance({"a": 2, "b": 1}, 4) == {"a": 1, "b": 2}


def test_other_groups_follow_a_gate_group_of_the_same_name_and_are_balanced_apart():
    out = assign({"m1": 3, "m2": 1}, {"m2": 5, "tests/test_x.py": 4, "tests/test_y.py": 1}, 2)
    assert out["m1"] == 1 and out["m2"] == 2  # gate groups by their weights
    assert out["tests/test_x.py"] == 1 and out["tests/test_y.py"] == 2  # others balanced among themselves


def test_module_of():
    assert module_of("tests/test_a.py::TestX::test_y[1]") == "tests/test_a.py"
    assert module_of("baselines/m.yaml::m[cpu-fp32]") == "baselines/m.yaml"


@given(
    st.dictionaries(st.text(min_size=1, max_size=6), st.integers(1, 20), min_size=0, max_size=30),
    st.integers(1, 8),
)
def test_every_group_in_exactly_one_shard_and_balanced(weights, n):
    out = balance(weights, n)
    assert set(out) == set(weights)
    assert all(1 <= k <= n for k in out.values())
    loads = [sum(w for g, w in weights.items() if out[g] == k) for k in range(1, n + 1)]
    if weights:
        # greedy LPT bound: no shard exceeds the lightest by more than the heaviest group
        assert max(loads) - min(loads) <= max(weights.values())
