"""Typed variant params (``models/variant.py``'s ``Param``): every param of rtn, awq and awq-checkpoint is
checked strictly, and the error names the param, the value with its type, and the fix."""

from __future__ import annotations

import re

import pytest

from pplgate.errors import VariantError
from pplgate.models.registry import kind_class, make_variant
from pplgate.models.variant import Param, type_problem

AWQ_OK = {"calibration": {"path": "/nonexistent.jsonl"}}  # construction reads no calibration file


def _spec(kind: str) -> dict[str, Param]:
    return {p.name: p for p in kind_class(kind).params_spec}


BAD_BY_TYPE = {
    bool: [("false", "write false, not 'false'"), ("no", "write false, not 'no'"), ("True", "write true, not 'True'"),
           (1, "write true, not 1"), (0, "write false, not 0"), (None, "write true or false"),
           (0.5, "write true or false")],
    int: [("4", "write 4, not '4'"), (True, "write a whole number"), (4.0, "write 4, not 4.0"),
          (None, "write a whole number"), ("four", "write a whole number")],
    str: [(5, "write it quoted, '5'"), (True, "write it quoted, 'true'"), (["gemm"], "write a string")],
}  # fmt: skip

CASES = [
    (kind, name, value, fix)
    for kind in ("rtn", "awq", "awq-checkpoint")
    for name, param in _spec(kind).items()
    for value, fix in BAD_BY_TYPE[param.type]
    if not (value is None and param.default is None)  # an optional param may be null
]


@pytest.mark.parametrize(("kind", "name", "value", "fix"), CASES, ids=lambda x: repr(x)[:20])
def test_every_param_is_strictly_typed(kind, name, value, fix) -> None:
    params = {**(AWQ_OK if kind == "awq" else {}), name: value}
    with pytest.raises(VariantError) as info:
        make_variant(kind, params)
    msg = str(info.value)
    assert msg.startswith(f"{kind}: param {name} must be ")
    assert f"got {value!r} ({type(value).__name__})" in msg and fix in msg


def test_every_param_of_the_builtin_kinds_has_a_type() -> None:
    assert set(_spec("rtn")) == {"w_bit", "q_group_size", "zero_point", "dtype"}
    assert set(_spec("awq")) == {"w_bit", "q_group_size", "zero_point", "version", "dtype", "apply_clip", "duo_scaling"}
    assert set(_spec("awq-checkpoint")) == {"checkpoint", "revision", "dtype"}
    assert "calibration" in kind_class("awq").params_allowed  # typed by CalibrationSpec.from_param


@pytest.mark.parametrize("key", ["zero_point", "apply_clip", "duo_scaling"])
def test_string_false_is_refused_and_real_false_is_recorded_false(key) -> None:
    with pytest.raises(VariantError, match=re.escape(f"param {key} must be a boolean (true or false), got 'false'")):
        make_variant("awq", {**AWQ_OK, key: "false"})
    v = make_variant("awq", {**AWQ_OK, key: False})
    assert getattr(v, key) is False and v.quant_config()["zero_point"] is (key != "zero_point")
    rtn = make_variant("rtn", {"zero_point": False})
    assert rtn.fingerprint()["zero_point"] is False


def test_string_choices() -> None:
    with pytest.raises(VariantError, match="param version must be gemm, gemv, gemv_fast or marlin, got 'exl3'"):
        make_variant("awq", {**AWQ_OK, "version": "exl3"})
    assert make_variant("awq", {**AWQ_OK, "version": "GEMM"}).version == "gemm"  # the choice's own spelling
    with pytest.raises(VariantError, match="param dtype must be auto, fp16, bf16 or fp32, got 'int8'"):
        make_variant("rtn", {"dtype": "int8"})
    v = make_variant("awq-checkpoint", {"checkpoint": None, "revision": "main"})
    assert v.checkpoint is None and v.revision == "main"


def test_params_must_be_a_mapping() -> None:
    with pytest.raises(VariantError, match="params must be a mapping, got list"):
        make_variant("rtn", [("w_bit", 4)])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "expected", "problem"),
    [
        (True, bool, None),
        (3, int, None),
        ("x", str, None),
        (False, int, "must be an integer, got False (bool)"),
        ("off", bool, "write false, not 'off'"),
        (" 8 ", int, "write 8, not ' 8 '"),
        (2.5, int, "write a whole number (default 4)"),
    ],
)
def test_type_problem(value, expected, problem) -> None:
    got = type_problem("p", value, expected, 4)
    assert (got is None) if problem is None else (problem in got)
