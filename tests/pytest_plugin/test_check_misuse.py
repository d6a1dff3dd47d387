"""Issue #25: ``ppl_regression.check()`` misuse fails the test with one line saying what to change (not a
traceback through the fixture), in real pytest sessions (pytester) on the plugin tests' tiny Llama."""

from __future__ import annotations

import re

from support import GATE_ARGS, gate_project

pytest_plugins = ["pytester"]

MISUSE = """
import pytest

MODEL = {model!r}

def test_no_tolerance(ppl_model, ppl_regression):
    ppl_regression.check(ppl_model(MODEL, "fp32"), name="y", seqlen=128, max_windows=1)

def test_positional_name(ppl_model, ppl_regression):
    ppl_regression.check(ppl_model(MODEL, "fp32"), "y", 0.001)

def test_no_name(ppl_model, ppl_regression):
    ppl_regression.check(ppl_model(MODEL, "fp32"), tolerance=0.001)

def test_unknown_keyword(ppl_model, ppl_regression):
    ppl_regression.check(ppl_model(MODEL, "fp32"), name="y", tol=0.001)

def test_bad_rule(ppl_model, ppl_regression):
    ppl_regression.check(ppl_model(MODEL, "fp32"), name="z", tolerance={{"type": "banana"}})

def test_absurd_bound(ppl_model, ppl_regression):
    ppl_regression.check(ppl_model(MODEL, "fp32"), name="w", tolerance={{"type": "relative", "max_rel": 1e308}})

def test_caught_like_any_error(ppl_model, ppl_regression):
    from pplgate.pytest_plugin.checks import CheckError
    with pytest.raises(CheckError, match="no tolerance"):
        ppl_regression.check(ppl_model(MODEL, "fp32"), name="v")
    try:  # a refused call does not use up the name
        ppl_regression.check(ppl_model(MODEL, "fp32"), name="v")
    except Exception as exc:
        assert "no tolerance" in str(exc)
"""

EXPECTED = {
    "test_no_tolerance": "CheckError: check(name='y'): no tolerance: pass tolerance= (e.g. tolerance=0.001",
    "test_positional_name": "CheckError: check() takes the model, then keywords only (name, tolerance, max_windows",
    "test_no_name": "CheckError: check(): name= is required",
    "test_unknown_keyword": "CheckError: check(name='y'): unknown keyword(s) ['tol']; it takes name, tolerance",
    "test_bad_rule": "CheckError: check(name='z'): tolerance={'type': 'banana'}: unknown rule type",
    "test_absurd_bound": "CheckError: check(name='w'): tolerance={'type': 'relative', 'max_rel': 1e+308}: 1e+308 is "
    "no tolerance",
}


def _sections(out: str) -> dict[str, list[str]]:
    """Each failure's report lines (between its ``___ name ___`` header and the next header)."""
    found: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in out.splitlines():
        m = re.match(r"^_{3,} (test_\w+) _{3,}$", line)
        if m:
            current = found.setdefault(m.group(1), [])
        elif re.match(r"^(=|_){3,}", line) or line.startswith("-" * 10):
            current = None
        elif current is not None and line.strip():
            current.append(line)
    return found


def test_check_misuse_is_one_line_per_failing_test(pytester, monkeypatch, tiny_model):
    gate_project(pytester, monkeypatch, "")
    pytester.makepyfile(test_misuse=MISUSE.format(model=str(tiny_model)))
    res = pytester.runpytest(*GATE_ARGS, "--tb=auto")
    out = res.stdout.str()
    res.assert_outcomes(failed=len(EXPECTED), passed=1)
    sections = _sections(out)
    for test, message in EXPECTED.items():
        lines = sections.get(test)
        assert lines is not None, (test, out)
        assert len(lines) == 1 and lines[0].startswith(message), (test, lines)
