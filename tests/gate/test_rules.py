"""Tolerance rules: one class per rule type, their sentences and their edges."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from pplgate.errors import BaselineError
from pplgate.gate.rules import (
    DIRECTIONS,
    RULE_KEYS,
    RULE_TYPES,
    AbsoluteRule,
    KldRule,
    RelationalRule,
    RelativeRule,
    Rule,
    RuleResult,
    SpeedRule,
    Top1Rule,
    parse_rule,
)
from pplgate.gate.validator import Validator


@pytest.mark.parametrize(
    ("rule", "ppl", "rec", "ref", "passed"),
    [
        (AbsoluteRule(max_delta=0.1), 10.05, 10.0, None, True),
        (AbsoluteRule(max_delta=0.1), 9.85, 10.0, None, False),  # two-sided: better also fails
        (AbsoluteRule(max_delta=0.1, direction="worse"), 9.0, 10.0, None, True),
        (RelativeRule(max_rel=0.01), 10.2, 10.0, None, False),
        (RelativeRule(max_rel=0.01), 10.09, 10.0, None, True),
        (RelationalRule(max_delta=0.5, direction="worse", ref="fp16"), 10.4, None, 10.0, True),
        (RelationalRule(max_delta=0.5, direction="worse", ref="fp16"), 10.6, None, 10.0, False),
        (RelationalRule(max_rel=0.05, direction="worse", ref="fp16"), 10.6, None, 10.0, False),
        (AbsoluteRule(max_delta=0.1), float("nan"), 10.0, None, False),
    ],
)
def test_rule_semantics(rule, ppl, rec, ref, passed):
    res = rule.check(ppl, rec, {"fp16": ref} if ref is not None else {})
    assert res.passed is passed
    assert res.text.startswith("[PASS]" if passed else "[FAIL]")
    assert rule.type in res.text


def test_one_class_per_rule_type():
    assert RULE_TYPES == {
        "absolute": AbsoluteRule,
        "relative": RelativeRule,
        "relational": RelationalRule,
        "speed": SpeedRule,
        "kld": KldRule,
        "top1": Top1Rule,
    }
    assert list(RULE_TYPES) == ["absolute", "relative", "relational", "speed", "kld", "top1"]
    assert all(issubclass(cls, Rule) for cls in RULE_TYPES.values())
    assert RULE_KEYS == {"type", "max_delta", "max_rel", "direction", "ref", "min_ratio", "max_mean", "min_agreement"}
    assert DIRECTIONS == ("both", "worse")
    with pytest.raises(TypeError):
        Rule()  # abstract


def test_defaults_and_what_each_rule_compares_with():
    assert AbsoluteRule(max_delta=1).direction == "both" and RelativeRule(max_rel=1).direction == "both"
    rel = RelationalRule(ref="fp32", max_delta=1)
    assert rel.direction == "worse" and rel.refs == ("fp32",) and not rel.needs_recorded
    assert AbsoluteRule(max_delta=1).refs == () and AbsoluteRule.needs_recorded and RelativeRule.needs_recorded


@pytest.mark.parametrize(
    ("rule", "describe", "short"),
    [
        (AbsoluteRule(max_delta=0.001), "absolute: |ppl - recorded| <= 0.001", "±0.001"),
        (AbsoluteRule(max_delta=0.5, direction="worse"), "absolute: ppl - recorded <= 0.5 (only worse counts)", "+0.5"),
        (RelativeRule(max_rel=0.01), "relative: |(ppl - recorded) / recorded| <= 1%", "±1.00%"),
        (RelativeRule(max_rel=0.025, direction="worse"),
         "relative: (ppl - recorded) / recorded <= 2.5% (only worse counts)", "+2.50%"),
        (RelationalRule(ref="fp16", max_delta=0.5),
         "relational: ppl - ppl[fp16] <= 0.5 (only worse counts)", "fp16+0.5"),
        (RelationalRule(ref="rtn", max_rel=0.000001, direction="both"),
         "relational: |(ppl - ppl[rtn]) / ppl[rtn]| <= 0.0001%", "rtn±0.00%"),
        (AbsoluteRule(max_delta=1.0e9), "absolute: |ppl - recorded| <= 1e+09", "±1e+09"),
    ],
)  # fmt: skip
def test_describe_and_short(rule, describe, short):
    assert rule.describe() == describe
    assert rule.short() == short


def test_result_texts():
    res = AbsoluteRule(max_delta=0.001).check(10.5, 10.0, {})
    assert res == RuleResult(AbsoluteRule(max_delta=0.001), False, res.text)
    assert res.text == "[FAIL] absolute: |ppl - recorded| <= 0.001: got +0.500000"
    assert res.to_dict() == {"text": res.text, "passed": False, "type": "absolute"}
    res = RelativeRule(max_rel=0.01).check(9.804, 10.0, {})
    assert res.text == "[FAIL] relative: |(ppl - recorded) / recorded| <= 1%: got -1.9600%"
    res = RelativeRule(max_rel=0.01, direction="worse").check(9.804, 10.0, {})
    assert res.text == "[PASS] relative: (ppl - recorded) / recorded <= 1% (only worse counts): got -1.9600%"
    res = RelationalRule(ref="fp32", max_rel=0.000001, direction="both").check(11.0, None, {"fp32": 10.0})
    assert res.text == (
        "[FAIL] relational: |(ppl - ppl[fp32]) / ppl[fp32]| <= 0.0001%: got +10.0000%; fp32 measured 10.000000 "
        "in this session"
    )
    res = RelationalRule(ref="fp32", max_delta=2).check(11.0, 99.0, {"fp32": 10.0})  # the record is not used
    assert res.passed and res.text.endswith("got +1.000000; fp32 measured 10.000000 in this session")


def test_no_reference_value_fails():
    assert AbsoluteRule(max_delta=1).check(10.0, None, {}).text == (
        "[FAIL] absolute: |ppl - recorded| <= 1: no reference value"
    )
    res = RelationalRule(ref="fp32", max_delta=1).check(10.0, 10.0, {"other": 10.0})
    assert not res.passed and res.text.endswith(": no reference value")


@pytest.mark.parametrize(
    ("rule", "ppl", "base", "passed"),
    [
        (AbsoluteRule(max_delta=0.5), 10.5, 10.0, True),  # the bound itself passes
        (AbsoluteRule(max_delta=0.5), 9.5, 10.0, True),
        (AbsoluteRule(max_delta=0.0), 10.0, 10.0, True),
        (AbsoluteRule(max_delta=0.0), math.nextafter(10.0, 11), 10.0, False),
        (AbsoluteRule(max_delta=0.5, direction="worse"), -math.inf, 10.0, False),  # never finite: fails
        (AbsoluteRule(max_delta=0.5, direction="worse"), math.inf, 10.0, False),
        (RelativeRule(max_rel=0.0, direction="worse"), 9.0, 10.0, True),
        (RelativeRule(max_rel=0.1), 11.0, 10.0, True),
        (RelativeRule(max_rel=0.1), 11.0001, 10.0, False),
    ],
)
def test_edges(rule, ppl, base, passed):
    assert rule.check(ppl, base, {}).passed is passed


def test_rules_are_frozen_values():
    r = AbsoluteRule(max_delta=0.1)
    with pytest.raises(AttributeError):
        r.max_delta = 1.0
    assert r == AbsoluteRule(max_delta=0.1) and r != RelativeRule(max_rel=0.1)
    assert hash(r) == hash(AbsoluteRule(max_delta=0.1))


# --------------------------------------------------------------------------- parsing


def _parse(node, path=Path("b.yaml")):
    return parse_rule(Validator(path), node, "profiles.p.variants.v.tolerance[0]", [node], 0)


@pytest.mark.parametrize(
    ("node", "rule"),
    [
        ({"type": "absolute", "max_delta": 1}, AbsoluteRule(max_delta=1.0)),
        ({"type": "absolute", "max_delta": 0, "direction": "worse"}, AbsoluteRule(max_delta=0.0, direction="worse")),
        ({"type": "relative", "max_rel": 0.5}, RelativeRule(max_rel=0.5)),
        ({"type": "relational", "ref": "a", "max_rel": 0.5}, RelationalRule(ref="a", max_rel=0.5)),
        ({"type": "relational", "ref": "a", "max_delta": 2, "direction": "both"},
         RelationalRule(ref="a", max_delta=2.0, direction="both")),
        ({"type": "speed", "ref": "fp16", "min_ratio": 0.8}, SpeedRule(ref="fp16", min_ratio=0.8)),
    ],
)  # fmt: skip
def test_parse(node, rule):
    got = _parse(node)
    assert got == rule and type(got) is type(rule)
    assert isinstance(got.direction, str)


@pytest.mark.parametrize(
    ("node", "keypath", "msg"),
    [
        ("absolute", "", "expected a mapping, got str"),
        ({"max_delta": 1}, ".type", "missing required key"),
        (
            {"type": "absolute", "max": 1},
            ".max",
            "unknown key 'max' (allowed: direction, max_delta, max_mean, max_rel, min_agreement, min_ratio, ref, type)",
        ),
        (
            {"type": "fuzzy"},
            ".type",
            "unknown rule type 'fuzzy' (allowed: absolute, relative, relational, speed, kld, top1)",
        ),
        ({"type": "speed", "ref": "fp16"}, "", "a speed rule takes min_ratio (e.g. 0.8"),
        ({"type": "speed", "min_ratio": 0.8}, ".ref", "expected a non-empty string, got None"),
        ({"type": "speed", "ref": "a", "min_ratio": 0.8, "max_rel": 1}, "", "takes ref and min_ratio (not max_rel)"),
        ({"type": "speed", "ref": "a", "min_ratio": -1}, ".min_ratio", "expected a non-negative number, got -1"),
        ({"type": "absolute"}, "", "an absolute rule takes max_delta (and no max_rel)"),
        ({"type": "absolute", "max_delta": 1, "max_rel": 1}, "", "an absolute rule takes max_delta (and no max_rel)"),
        ({"type": "relative", "max_delta": 1}, "", "a relative rule takes max_rel (and no max_delta)"),
        ({"type": "relational", "ref": "a"}, "", "a relational rule takes exactly one of max_delta / max_rel"),
        ({"type": "relational", "max_delta": 1}, ".ref", "expected a non-empty string, got None"),
        ({"type": "relative", "max_rel": 1, "ref": "a"}, ".ref", "only relational rules take ref (this is relative)"),
        ({"type": "absolute", "max_delta": "1"}, ".max_delta", "expected a non-negative number, got '1'"),
        ({"type": "absolute", "max_delta": math.inf}, ".max_delta", "expected a non-negative number, got inf"),
        ({"type": "relational", "ref": "a", "max_rel": 1e308}, ".max_rel", "1e+308 is no tolerance (a relative bound"),
        ({"type": "kld", "max_rel": 1e308}, ".max_rel", "1e+308 is no tolerance (a relative bound above 10"),
        ({"type": "top1", "max_rel": 10.5}, ".max_rel", "10.5 is no tolerance"),
        ({"type": "kld", "max_rel": math.nan}, ".max_rel", "expected a non-negative number, got nan"),
        ({"type": "absolute", "max_delta": 1, "direction": "better"}, ".direction",
         "expected one of both, worse, got 'better'"),
    ],
)  # fmt: skip
def test_parse_errors(node, keypath, msg):
    with pytest.raises(BaselineError) as ei:
        _parse(node)
    assert ei.value.keypath == "profiles.p.variants.v.tolerance[0]" + keypath
    assert str(ei.value).startswith("b.yaml: profiles.p.variants.v.tolerance[0]") and msg in str(ei.value)


# --------------------------------------------------------------------------- speed


def test_speed_rule_judges_the_same_session_ratio_and_records_it():
    rule = SpeedRule(ref="fp16", min_ratio=0.8)
    assert rule.refs == ("fp16",) and not rule.needs_recorded and rule.metric == "tokens_per_s"
    ok = rule.check(900.0, None, {"fp16": 1000.0})
    assert ok.passed and ok.value == 0.9
    assert ok.text == (
        "[PASS] speed: tokens/s >= 0.8 x tokens/s[fp16] (same session, same device): got 0.900 "
        "(900.0 tok/s vs fp16 1,000.0 tok/s in this session)"
    )
    assert ok.to_dict() == {"text": ok.text, "passed": True, "type": "speed", "value": 0.9}
    slow = rule.check(799.0, None, {"fp16": 1000.0})
    assert not slow.passed and slow.value == 0.799 and "799.0 tok/s vs fp16 1,000.0 tok/s" in slow.text
    assert rule.check(800.0, None, {"fp16": 1000.0}).passed  # the bound itself passes
    assert rule.short() == "fp16 tok/s x0.8"


@pytest.mark.parametrize("speeds", [{}, {"fp16": 0.0}, {"fp16": math.nan}])
def test_speed_rule_without_a_reference_speed_fails(speeds):
    res = SpeedRule(ref="fp16", min_ratio=0.8).check(900.0, None, speeds)
    assert not res.passed and res.value is None and "no tokens/s for this entry or for fp16" in res.text
