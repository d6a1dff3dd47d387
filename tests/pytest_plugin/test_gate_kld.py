"""End-to-end tests of entries with a ``reference:`` (KL divergence / top-1 agreement rules): real pytest
sessions (pytester) on a tiny seeded Llama with the GPT-2 tokenizer and a seeded perturbation of it."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest
from support import (
    BROKEN_CONFTEST,
    GATE_ARGS,
    PERTURBED_CONFTEST,
    gate_project,
    tiny_baseline,
    wikitext_path,
)

from pplgate.gate.spec import parse_baseline as _parse_baseline
from pplgate.pytest_plugin.items import known_kinds as _known_kinds

pytest_plugins = ["pytester"]

WIKITEXT = wikitext_path()

# counts the comparison and PPL passes; plus the test-only kind test-perturbed (its KLD against fp32 grows with scale)
CONFTEST = (
    textwrap.dedent(
        """
    import pplgate.measure

    CALLS = {"compare": [], "ppl": 0}
    _compare, _ppl = pplgate.measure.evaluate_comparisons, pplgate.measure.evaluate_perplexity

    def counting_compare(reference, models, *a, **kw):
        CALLS["compare"].append(len(models))
        return _compare(reference, models, *a, **kw)

    def counting_ppl(*a, **kw):
        CALLS["ppl"] += 1
        return _ppl(*a, **kw)

    pplgate.measure.evaluate_comparisons = counting_compare  # Measurer.compare_many's pass
    pplgate.measure.evaluate_perplexity = counting_ppl

    def pytest_terminal_summary(terminalreporter):
        terminalreporter.write_line(f"passes: compare={CALLS['compare']} ppl={CALLS['ppl']}")
    """
    )
    + PERTURBED_CONFTEST
)

VARIANTS = """
  fp32:
    kind: fp32
    tolerance:
      - {type: absolute, max_delta: 0.001}
  noisy:
    kind: test-perturbed
    params: {scale: 0.02}
    reference: fp32   # KLD against fp32
    tolerance:
      - {type: absolute, max_delta: 0.001}
      - {type: kld, max_delta: 0.000001}    # the recorded mean KLD
      - {type: top1, min_agreement: 0.5}
  noisier:
    kind: test-perturbed
    params: {scale: 0.05}
    reference: fp32
    tolerance:
      - {type: absolute, max_delta: 0.001}
      - {type: kld, ref: noisy, max_delta: 1000}   # a noisier model diverges more: bounded loosely here
      - {type: top1, max_delta: 0.000001}
"""


def baseline(model_dir: Path, variants: str = VARIANTS) -> str:
    return tiny_baseline(model_dir, variants)


def parse_baseline(path):
    return _parse_baseline(path, known_kinds=[*_known_kinds(), "test-perturbed"])


@pytest.fixture
def gate(pytester: pytest.Pytester, monkeypatch):
    gate_project(pytester, monkeypatch, CONFTEST)
    (pytester.path / "baselines").mkdir()
    return pytester


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest(*GATE_ARGS, *args)


@pytest.fixture(scope="module")
def recorded(tiny_model, tmp_path_factory) -> tuple[str, str]:
    """The baseline file recorded by a real ``--update-baselines`` session, and that session's output."""
    d = tmp_path_factory.mktemp("recorded")
    (d / "pytest.ini").write_text("[pytest]\n")
    (d / "conftest.py").write_text(CONFTEST)
    (d / "baselines").mkdir()
    f = d / "baselines" / "tiny.yaml"
    f.write_text(baseline(tiny_model))
    import subprocess
    import sys

    env = {**os.environ, "PPLGATE_WIKITEXT": str(WIKITEXT)}
    env.pop("GITHUB_STEP_SUMMARY", None)
    res = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "pplgate.plugin", "-p", "no:cacheprovider", "-q", "--update-baselines"],
        cwd=d,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    return f.read_text(), res.stdout


def edit(path: Path, fn) -> None:
    from ruamel.yaml import YAML

    y = YAML()
    data = y.load(path.read_text())
    fn(data["profiles"]["cpu"]["variants"])
    with path.open("w") as fh:
        y.dump(data, fh)


def test_update_records_the_vectors_in_one_pass_keeping_comments(recorded, tmp_path):
    text, out = recorded
    assert "passes: compare=[2] ppl=0" in out  # one pass for the reference and both variants, no PPL pass
    assert "# tiny test model" in text and "reference: fp32   # KLD against fp32" in text
    f = tmp_path / "tiny.yaml"
    f.write_text(text)
    variants = parse_baseline(f).profiles["cpu"].variants
    assert variants["fp32"].recorded.kld is None and "reference" not in variants["fp32"].fingerprint
    assert "mean_kld" not in text.split("noisy:")[0]  # the reference's own block: as without references
    for name in ("noisy", "noisier"):
        rk = variants[name].recorded.kld
        assert len(rk.window_klds) == len(rk.window_top1) == 4 and rk.mean_kld > 0 and 0 < rk.top1_agreement < 1
        assert rk.mean_kld == pytest.approx(sum(rk.window_klds) / 4, rel=1e-6)
        assert variants[name].fingerprint["reference"] == {
            "entry": "fp32",
            "variant": {"kind": "fp32", "dtype": "fp32"},
            "dtype": "float32",
        }
    assert variants["noisier"].recorded.kld.mean_kld > variants["noisy"].recorded.kld.mean_kld


def test_pass_shows_kld_in_table_json_markdown_junit(gate, recorded):
    (gate.path / "baselines" / "tiny.yaml").write_text(recorded[0])
    res = run(gate, "--pplgate-report", "rep", "--junitxml", "junit.xml")
    res.assert_outcomes(passed=3)
    out = res.stdout.str()
    assert "passes: compare=[2] ppl=0" in out
    header = next(ln for ln in res.stdout.lines if ln.startswith("model "))
    assert header.split()[-2:] == ["kld", "top1"]
    row = next(ln for ln in res.stdout.lines if "cpu-noisy " in ln)
    assert "(+0.0000)" in row and "%" in row
    data = json.loads((gate.path / "rep" / "pplgate-results.json").read_text())
    by_name = {r["variant"]: r for r in data["records"]}
    assert "kld" not in by_name["fp32"]
    block = by_name["noisy"]["kld"]
    assert block["reference"] == "fp32" and len(block["window_klds"]) == 4 and block["paired"]["n"] == 4
    assert "| kld | top1 |" in (gate.path / "rep" / "pplgate-summary.md").read_text()
    assert 'name="pplgate_mean_kld"' in (gate.path / "junit.xml").read_text()


def test_compare_group_splits_the_pass(gate, recorded):
    (gate.path / "baselines" / "tiny.yaml").write_text(recorded[0])
    res = run(gate, "--pplgate-compare-group", "1")
    res.assert_outcomes(passed=3)
    assert "passes: compare=[1, 1] ppl=0" in res.stdout.str()  # the reference's own PPL from the first pass


def test_kld_regression_prints_the_paired_per_window_kld(gate, recorded):
    f = gate.path / "baselines" / "tiny.yaml"
    f.write_text(recorded[0])

    def lower(variants):
        rec = variants["noisy"]["recorded"]
        for i in range(4):
            rec["window_klds"][i] = rec["window_klds"][i] * 0.9
        rec["mean_kld"] = sum(rec["window_klds"]) / 4

    edit(f, lower)
    res = run(gate, "--pplgate-report", "rep", "-k", "noisy")
    res.assert_outcomes(failed=1)
    out = res.stdout.str()
    assert "KL DIVERGENCE / TOP-1 REGRESSION" in out
    assert "[FAIL] kld: |mean KLD - recorded| <= 1e-06: got +" in out
    assert "[PASS] top1: agreement >= 0.5: got " in out
    assert "paired per-window dKLD over 4 windows: mean +" in out and "(systematic shift); 4/4 windows worse" in out
    assert "KLD vs fp32: mean " in out
    assert list((gate.path / "rep").glob("*-kld.png"))


def test_kld_bound_and_relational_rules_fail(gate, recorded):
    f = gate.path / "baselines" / "tiny.yaml"
    f.write_text(recorded[0])

    def strict(variants):
        variants["noisy"]["tolerance"].append({"type": "kld", "max_mean": 1e-9})
        variants["noisier"]["tolerance"][1]["max_delta"] = 0.0  # noisier's KLD <= noisy's: false

    edit(f, strict)
    res = run(gate, "-k", "noisy or noisier")
    res.assert_outcomes(failed=2)
    out = res.stdout.str()
    assert "[FAIL] kld: mean KLD <= 1e-09: got " in out
    assert "[FAIL] kld: mean KLD - kld[noisy] <= 0 (only worse counts): got +" in out
    assert "noisy measured" in out and "in this session" in out
    res = run(gate, "-k", "noisier", "--update-baselines")  # noisy and fp32 deselected: still compared
    res.assert_outcomes(failed=1)
    assert "not updating: a relational rule fails in this session" in res.stdout.str()


def test_a_changed_or_added_reference_reads_as_drift(gate, recorded):
    f = gate.path / "baselines" / "tiny.yaml"
    f.write_text(recorded[0])

    def other_reference(variants):
        variants["noisy"]["fingerprint"]["reference"]["entry"] = "fp16"
        del variants["noisier"]["fingerprint"]["reference"]  # as recorded before the entry named a reference

    edit(f, other_reference)
    res = run(gate, "-k", "noisy or noisier")
    res.assert_outcomes(failed=2)
    out = res.stdout.str()
    assert "PROTOCOL DRIFT" in out and "reference.entry: 'fp16' -> 'fp32'" in out
    assert "reference: ABSENT -> {'entry': 'fp32'" in out


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        ("nope", "reference 'nope' is not an entry of this profile"),
        ("noisy", "an entry cannot be its own reference"),
    ],
)
def test_bad_reference_is_a_collection_error(gate, tiny_model, reference, message):
    variants = VARIANTS.replace(
        "params: {scale: 0.02}\n    reference: fp32", f"params: {{scale: 0.02}}\n    reference: {reference}"
    )
    (gate.path / "baselines" / "tiny.yaml").write_text(baseline(tiny_model, variants))
    res = run(gate)
    out = res.stdout.str()
    assert "invalid baseline file" in out and message in out
    assert "variants.noisy.reference" in out


def test_one_entry_that_fails_in_the_shared_pass_fails_alone(gate, tiny_model):
    """An entry whose quantizer fails is that entry's error; the other entries of its pass are measured."""
    (gate.path / "conftest.py").write_text(CONFTEST + BROKEN_CONFTEST)
    broken = "\n  broken:\n    kind: test-broken\n    reference: fp32\n    tolerance: [{type: kld, max_delta: 1}]"
    (gate.path / "baselines" / "tiny.yaml").write_text(baseline(tiny_model, VARIANTS + broken))
    res = run(gate, "--update-baselines")
    out = res.stdout.str()
    assert res.ret == 1, out
    res.assert_outcomes(passed=3, errors=0, failed=1)
    assert "tiny[cpu-broken]" in out and "synthetic prepare failure" in out
    failed = [ln for ln in res.stdout.lines if ln.startswith("FAILED")]
    assert len(failed) == 1 and "tiny[cpu-broken]" in failed[0]  # not blamed on the others
    for name in ("fp32", "noisy", "noisier"):
        assert f"cpu/{name}:" in out  # created
