"""The fixtures (``ppl_model``, ``ppl_variant``, ``ppl_regression``) in real pytest sessions (pytester):
first run records and fails, pass, regression, drift, update, ``-n 2``, a fixture entry beside a collected
entry in one file, and misuse. A tiny seeded Llama with the real GPT-2 tokenizer keeps them fast."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest
from support import GATE_ARGS, PERTURBED_CONFTEST, gate_project

from pplgate.gate.spec import parse_baseline as _parse_baseline
from pplgate.pytest_plugin.items import known_kinds as _known_kinds

pytest_plugins = ["pytester"]


CONFTEST = PERTURBED_CONFTEST  # the test-only kind test-perturbed

# the shape the issue asks for: one test, parametrized over two variants of one model
TEST_MODULE = """
import pytest

MODEL = {model!r}

VARIANTS = [("fp32", {{}}), ("test-perturbed", {{"scale": {scale}}})]

@pytest.mark.parametrize("kind,params", VARIANTS, ids=["fp32", "noisy"])
def test_ppl(ppl_model, ppl_variant, ppl_regression, kind, params):
    base = ppl_model(MODEL, "fp32")
    model = base if kind == "fp32" else ppl_variant(base, kind, params)
    ppl_regression.check(model, name=f"tiny-{{kind}}", tolerance=0.001, seqlen=128, batch_size=2, max_windows={k})
"""


def parse_baseline(path: Path):
    return _parse_baseline(path, known_kinds=[*_known_kinds(), "test-perturbed"])


@pytest.fixture
def proj(pytester: pytest.Pytester, monkeypatch, tiny_model):
    return gate_project(pytester, monkeypatch, CONFTEST)


def module(proj: pytest.Pytester, tiny_model: Path, *, scale: float = 0.02, k: int = 4, name="test_quant") -> Path:
    return proj.makepyfile(**{name: TEST_MODULE.format(model=str(tiny_model), scale=scale, k=k)})


def run(proj: pytest.Pytester, *args: str) -> pytest.RunResult:
    return proj.runpytest(*GATE_ARGS, *args)


def test_fixtures_are_listed(proj):
    res = proj.runpytest("-p", "pplgate.plugin", "-p", "no:cacheprovider", "--fixtures")
    out = res.stdout.str()
    for name in ("ppl_model [session scope]", "ppl_variant [session scope]", "ppl_regression"):
        assert name in out, out
    assert "pplgate: load a model once per session" in out and "pplgate: ``ppl_regression.check(" in out


def test_first_run_records_and_fails_then_passes(proj, tiny_model):
    module(proj, tiny_model)
    first = run(proj)
    first.assert_outcomes(failed=2)
    out = first.stdout.str()
    assert "no baseline was recorded for entry 'tiny-fp32'" in out and "Recorded it now" in out
    assert "Traceback" not in out and "tests/tiny-fp32" in out  # the update table of the session
    f = proj.path / "baselines" / "test_quant.yaml"
    spec = parse_baseline(f)
    assert spec.model is None and sorted(spec.tests) == ["tiny-fp32", "tiny-test-perturbed"]
    assert all(len(e.recorded.window_nlls) == 4 for e in spec.tests.values())
    assert spec.tests["tiny-test-perturbed"].fingerprint["variant"] == {"kind": "test-perturbed", "scale": 0.02}
    assert spec.tests["tiny-fp32"].recorded.provenance["command"].startswith("pytest")
    again = run(proj, "--pplgate-report", "rep")
    again.assert_outcomes(passed=2)
    assert any("tiny-fp32" in ln and "PASS" in ln for ln in again.stdout.lines)
    assert "tests-tiny-fp32" in (proj.path / "rep" / "pplgate-summary.md").read_text()


def test_regression_fails_with_the_gate_message_then_update(proj, tiny_model):
    module(proj, tiny_model)
    run(proj)  # records
    module(proj, tiny_model, scale=0.05)  # "a code change": the noisy variant gets worse
    res = run(proj)
    res.assert_outcomes(passed=1, failed=1)
    out = res.stdout.str()
    assert "pplgate: tiny-test-perturbed (test_quant.py::test_ppl[noisy])" in out
    assert "PROTOCOL DRIFT" in out and "variant" in out  # the variant's own fingerprint (scale) changed
    assert 'pytest --update-baselines --force-update "test_quant.py::test_ppl[noisy]"' in out
    refused = run(proj, "--update-baselines")
    refused.assert_outcomes(passed=1, failed=1)
    assert "refusing to update across a protocol change without --force-update" in refused.stdout.str()
    run(proj, "--update-baselines", "--force-update").assert_outcomes(passed=2)
    run(proj).assert_outcomes(passed=2)


def test_tolerance_failure_paired_explanation(proj, tiny_model):
    module(proj, tiny_model)
    run(proj)
    f = proj.path / "baselines" / "test_quant.yaml"
    from ruamel.yaml import YAML

    y = YAML()
    data = y.load(f.read_text())
    rec = data["tests"]["tiny-fp32"]["recorded"]
    for i in range(len(rec["window_nlls"])):
        rec["window_nlls"][i] -= 0.05 + 0.01 * i
    import math

    rec["ppl"] = round(math.exp(sum(rec["window_nlls"]) / len(rec["window_nlls"])), 6)
    with f.open("w") as fh:
        y.dump(data, fh)
    res = run(proj)
    res.assert_outcomes(passed=1, failed=1)
    out = res.stdout.str()
    assert "PERPLEXITY REGRESSION: measured" in out and "[FAIL] absolute: |ppl - recorded| <= 0.001" in out
    assert "paired per-window dNLL over 4 windows: mean +0.065000 nats" in out
    assert 'pytest --update-baselines "test_quant.py::test_ppl[fp32]"' in out
    upd = run(proj, "--update-baselines", "-k", "fp32")
    upd.assert_outcomes(passed=1, deselected=1)
    assert "tests/tiny-fp32:" in upd.stdout.str()
    run(proj).assert_outcomes(passed=2)


def test_two_workers_write_two_entries_of_one_file(proj, tiny_model, monkeypatch):
    module(proj, tiny_model)
    src = str(Path(__import__("pplgate").__file__).parents[1])
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]))
    res = proj.runpytest_subprocess(
        "-p", "pplgate.plugin", "-p", "no:cacheprovider", "-n", "2", "-v", "--update-baselines"
    )
    res.assert_outcomes(passed=2)
    out = res.stdout.str()
    assert "[gw0]" in out and "[gw1]" in out and "PASSED" in out  # one test on each worker
    spec = parse_baseline(proj.path / "baselines" / "test_quant.yaml")
    assert sorted(spec.tests) == ["tiny-fp32", "tiny-test-perturbed"]
    res = proj.runpytest_subprocess("-p", "pplgate.plugin", "-p", "no:cacheprovider", "-n", "2")
    res.assert_outcomes(passed=2)


def test_fixture_entry_and_collected_entry_share_a_file(proj, tiny_model):
    """A collected ``profiles:`` entry and a checked ``tests:`` entry update without touching each other."""
    collected = textwrap.dedent(
        f"""\
        # one file, two kinds of entries
        schema_version: 1
        model:
          name: tiny
          source: {tiny_model}
        profiles:
          cpu:
            device: cpu
            seqlen: 128
            batch_size: 2
            max_windows: 4
            variants:
              fp32:
                kind: fp32
                tolerance:
                  - {{type: absolute, max_delta: 0.001}}   # collected by the plugin
        """
    )
    (proj.path / "baselines").mkdir()
    f = proj.path / "baselines" / "test_quant.yaml"
    f.write_text(collected)
    module(proj, tiny_model)
    run(proj, "--update-baselines", "baselines").assert_outcomes(passed=1)  # the collected entry only
    after_yaml = f.read_text()
    assert "recorded:" in after_yaml and "tests:" not in after_yaml
    run(proj, "test_quant.py").assert_outcomes(failed=2)  # the fixture's first run: appends tests:
    both = f.read_text()
    assert both.startswith(after_yaml) and "\ntests:\n  tiny-fp32:\n" in both
    spec = parse_baseline(f)
    assert spec.profiles["cpu"].variants["fp32"].recorded.ppl == pytest.approx(spec.tests["tiny-fp32"].recorded.ppl)
    run(proj, "--pplgate-report", "rep").assert_outcomes(passed=3)  # collected + two checks
    records = json.loads((proj.path / "rep" / "pplgate-results.json").read_text())["records"]
    assert len(records) == 3 and {r["model"] for r in records} == {tiny_model.name}  # one name: the source's
    # re-recording the fixture entries leaves the collected entry's bytes alone, and the other way round
    run(proj, "--update-baselines", "test_quant.py").assert_outcomes(passed=2)
    text = f.read_text()
    assert text.split("\ntests:\n")[0] == both.split("\ntests:\n")[0] and text != both  # new tests provenance
    run(proj, "--update-baselines", "baselines").assert_outcomes(passed=1)
    final = f.read_text()
    assert final.split("\ntests:\n")[1] == text.split("\ntests:\n")[1] and final != text


def test_check_twice_with_one_name_is_an_error(proj, tiny_model):
    proj.makepyfile(
        test_twice=f"""
        def test_twice(ppl_model, ppl_regression):
            m = ppl_model({str(tiny_model)!r}, "fp32")
            ppl_regression.check(m, name="same", tolerance=0.001, seqlen=128, max_windows=1)
            ppl_regression.check(m, name="same", tolerance=0.001, seqlen=128, max_windows=1)
        """
    )
    res = run(proj, "--update-baselines")
    res.assert_outcomes(failed=1)
    out = res.stdout.str()
    assert "CheckError: check(name='same'): entry 'same' of" in out
    assert "already checked in this session by this test" in out
    assert "each check needs its own name" in out
    assert "NOT writing baseline updates" in out  # a non-gate failure blocks --update-baselines
    assert not (proj.path / "baselines" / "test_twice.yaml").exists()


def test_misuse_errors_name_the_fix(proj, tiny_model):
    proj.makepyfile(
        test_misuse=f"""
        import pytest
        from pplgate.pytest_plugin.checks import CheckError

        def test_not_a_handle(ppl_regression):
            with pytest.raises(CheckError, match="expected what ppl_model"):
                ppl_regression.check(object(), name="x", tolerance=0.1)

        def test_no_tolerance(ppl_model, ppl_regression):
            m = ppl_model({str(tiny_model)!r}, "fp32")
            with pytest.raises(CheckError, match="no tolerance: pass tolerance="):
                ppl_regression.check(m, name="y", seqlen=128, max_windows=1)

        def test_bad_rule(ppl_model, ppl_regression):
            m = ppl_model({str(tiny_model)!r}, "fp32")
            with pytest.raises(CheckError, match="unknown rule type"):
                ppl_regression.check(m, name="z", tolerance={{"type": "banana"}}, seqlen=128, max_windows=1)

        def test_relational_before_its_reference(ppl_model, ppl_regression):
            m = ppl_model({str(tiny_model)!r}, "fp32")
            with pytest.raises(CheckError, match="which was not checked in this session before it"):
                ppl_regression.check(m, name="w", tolerance=[{{"type": "relational", "ref": "v", "max_rel": 0.1}}],
                                     seqlen=128, max_windows=1)
        """
    )
    run(proj).assert_outcomes(passed=4)


def test_relational_rule_between_checked_entries(proj, tiny_model):
    proj.makepyfile(
        test_rel=f"""
        def test_rel(ppl_model, ppl_variant, ppl_regression):
            base = ppl_model({str(tiny_model)!r}, "fp32")
            ppl_regression.check(base, name="fp32", tolerance=0.001, seqlen=128, max_windows=2)
            noisy = ppl_variant(base, "test-perturbed", {{"scale": 0.05}})
            ppl_regression.check(noisy, name="noisy", seqlen=128, max_windows=2,
                                 tolerance=[{{"type": "relational", "ref": "fp32", "max_rel": 0.000001}}])
        """
    )
    res = run(proj, "--update-baselines")
    res.assert_outcomes(failed=1)
    assert "not updating: a relational rule fails in this session" in res.stdout.str()
    assert "fp32 measured" in res.stdout.str()


def test_one_name_checked_by_tests_on_two_workers_is_never_written(proj, tiny_model, monkeypatch):
    body = textwrap.dedent(
        """
        def test_{n}(ppl_model, ppl_regression):
            m = ppl_model({model!r}, "fp32")
            ppl_regression.check(m, name="same", tolerance=0.001, seqlen=128, max_windows=1, baseline="shared.yaml")
        """
    )
    proj.makepyfile(test_a=body.format(n="a", model=str(tiny_model)), test_b=body.format(n="b", model=str(tiny_model)))
    src = str(Path(__import__("pplgate").__file__).parents[1])
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]))
    res = proj.runpytest_subprocess("-p", "pplgate.plugin", "-p", "no:cacheprovider", "-n", "2", "--update-baselines")
    out = res.stdout.str()
    assert res.ret == 1, out
    # one worker: check() refuses the second call; two workers: the controller refuses to write either
    assert "already checked in this session by" in out or (
        "was checked by test_a.py::test_a and by test_b.py::test_b" in out
        or "was checked by test_b.py::test_b and by test_a.py::test_a" in out
    )
    assert not (proj.path / "baselines" / "shared.yaml").exists()


def test_a_test_that_changes_the_shared_model_in_place_fails_by_name(proj, tiny_model):
    """The session shares one float model; a test that changes it in place fails at teardown (named), and a
    later test measures a freshly loaded copy: it still matches the record (on the changed model it would not)."""
    measure = f"""
def test_b_measures(ppl_model, ppl_regression):
    base = ppl_model({str(tiny_model)!r}, "fp32")
    ppl_regression.check(base, name="tiny-fp32", tolerance=0.001, seqlen=128, batch_size=2, max_windows=2)
"""
    proj.makepyfile(test_corrupt=measure)
    run(proj, "--update-baselines").assert_outcomes(passed=1)
    proj.makepyfile(
        test_corrupt=f"""
import torch

def test_a_corrupts(ppl_model):
    model = ppl_model({str(tiny_model)!r}, "fp32").model
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight.mul_(1.5)
"""
        + measure
    )
    res = run(proj)
    out = res.stdout.str()
    res.assert_outcomes(passed=2, errors=1)  # test_a passes its call and errors at teardown; test_b passes
    assert "test_corrupt.py::test_a_corrupts changed the session's shared model" in out
    assert "copy.deepcopy(ppl_model(...).model)" in out
