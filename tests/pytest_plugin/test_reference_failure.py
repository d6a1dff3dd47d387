"""Issue #24: a reference entry whose quantizer raises fails every entry that needs it with one line naming the
reference ("reference 'broken' of entry 'noisy' failed: ..."), and itself with its own error (real pytest
sessions, pytester, on the plugin tests' tiny Llama; the test-only kinds of tests/support.py)."""

from __future__ import annotations

import re

from support import BROKEN_CONFTEST, GATE_ARGS, PERTURBED_CONFTEST, gate_project, tiny_baseline

pytest_plugins = ["pytester"]

VARIANTS = """
fp32:
  kind: fp32
  tolerance: [{type: absolute, max_delta: 0.001}]
broken:
  kind: test-broken
  tolerance: [{type: absolute, max_delta: 0.001}]
noisy:
  kind: test-perturbed
  params: {scale: 0.02}
  reference: broken
  tolerance: [{type: kld, max_delta: 1}]
noisier:
  kind: test-perturbed
  params: {scale: 0.05}
  reference: broken
  tolerance: [{type: kld, max_delta: 1}]
"""


def _failure_lines(out: str, name: str) -> list[str]:
    """The report lines of the failure whose header names ``name``."""
    lines = out.splitlines()
    start = next(i for i, ln in enumerate(lines) if re.match(rf"^_+ .*{re.escape(name)}.* _+$", ln))
    body = []
    for ln in lines[start + 1 :]:
        if re.match(r"^(_|=){3,}", ln) or ln.startswith("-" * 10):
            break
        if ln.strip():
            body.append(ln)
    return body


def test_a_failing_reference_is_named_by_the_entries_that_need_it(pytester, monkeypatch, tiny_model):
    gate_project(pytester, monkeypatch, PERTURBED_CONFTEST + BROKEN_CONFTEST)
    (pytester.path / "baselines").mkdir()
    (pytester.path / "baselines" / "tiny.yaml").write_text(tiny_baseline(tiny_model, VARIANTS, max_windows=1))
    res = pytester.runpytest(*GATE_ARGS, "--update-baselines", "--pplgate-cache", "off")
    out = res.stdout.str()
    res.assert_outcomes(passed=1, failed=3)  # fp32 (no reference) is measured and recorded as before
    for name in ("noisy", "noisier"):
        body = _failure_lines(out, f"tiny[cpu-{name}]")
        assert body == [
            f"pplgate: tiny[cpu-{name}]: VariantError: reference 'broken' of entry '{name}' failed: "
            "RuntimeError: synthetic prepare failure"
        ], out
    summary = {ln.split("::")[1].split(" ")[0]: ln for ln in res.stdout.lines if ln.startswith("FAILED ")}
    assert "- RuntimeError: synthetic prepar" in summary["tiny[cpu-broken]"]  # its own error
    assert "cpu/fp32:" in out  # created
