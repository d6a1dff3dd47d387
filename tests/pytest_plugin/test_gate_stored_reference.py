"""Issue #28 item 5: a gate entry gated against a stored reference (``reference: {file: PATH}``, written by
``pplgate reference save``): recorded and passing in real pytest sessions, top-1 exactly the in-memory
comparison's, the KLD a lower bound of it, the file's identity in the fingerprint (a changed file is drift), and a
missing, foreign or malformed reference a clear error."""

from __future__ import annotations

import json

import pytest
from support import GATE_ARGS, gate_project, tiny_baseline, wikitext_path

from pplgate.cli import main
from pplgate.gate.spec import parse_baseline

pytest_plugins = ["pytester"]

ENTRIES = """
  fp32:
    kind: fp32
    tolerance:
      - {type: absolute, max_delta: 0.001}
  rtn:
    kind: rtn
    params: {w_bit: 4, q_group_size: 32}
    reference: fp32
    tolerance:
      - {type: absolute, max_delta: 0.001}
      - {type: kld, max_delta: 0.000001}
  rtn-stored:
    kind: rtn
    params: {w_bit: 4, q_group_size: 32}
    reference: {file: %s}
    tolerance:
      - {type: absolute, max_delta: 0.001}
      - {type: kld, max_delta: 0.000001}
      - {type: top1, max_delta: 0.000001}
"""


def _save(model, out, *extra: str) -> None:
    argv = ["reference", "save", "--model", str(model), "--variant", "fp32", "--dataset", str(wikitext_path())]
    argv += ["--device", "cpu", "--seqlen", "128", "--batch-size", "2", "--no-progress", "--out", str(out)]
    assert main([*argv, *extra]) == 0


@pytest.fixture
def gate(pytester: pytest.Pytester, monkeypatch, tiny_model):
    gate_project(pytester, monkeypatch, "")
    (pytester.path / "baselines" / "refs").mkdir(parents=True)
    return pytester


def _write(gate, tiny_model, ref: str = "refs/fp32.safetensors"):
    f = gate.path / "baselines" / "tiny.yaml"
    f.write_text(tiny_baseline(tiny_model, ENTRIES % ref, max_windows=2))
    return f


def test_an_entry_is_recorded_and_gated_against_a_stored_reference(gate, tiny_model):
    # no sampled tail (--tail-samples 0): the KLD is then a lower bound of the exact one (the default's sampled
    # tail is an unbiased estimate instead, whose noise swamps this random model's tiny KLD)
    ref = gate.path / "baselines" / "refs" / "fp32.safetensors"
    _save(tiny_model, ref, "--max-windows", "2", "--top-k", "64", "--tail-samples", "0")
    f = _write(gate, tiny_model)
    res = gate.runpytest(*GATE_ARGS, "--update-baselines", "baselines")
    res.assert_outcomes(passed=3)
    variants = parse_baseline(f, known_kinds=["fp32", "rtn"]).profiles["cpu"].variants
    mem, stored = variants["rtn"], variants["rtn-stored"]
    assert stored.reference is None and stored.reference_file.endswith("baselines/refs/fp32.safetensors")
    ident = stored.fingerprint["reference"]
    assert ident["file"] == "fp32.safetensors" and ident["top_k"] == "64" and len(ident["content_sha256"]) == 64
    assert "/" not in str(ident)  # the file's name and content hash: no machine path in the baseline
    assert stored.recorded.window_nlls == mem.recorded.window_nlls and stored.recorded.ppl == mem.recorded.ppl
    assert stored.recorded.kld.window_top1 == mem.recorded.kld.window_top1  # top-1 is exact from top-K
    assert 0 < stored.recorded.kld.mean_kld <= mem.recorded.kld.mean_kld * (1 + 1e-6)  # one tail bucket: a bound
    res = gate.runpytest(*GATE_ARGS, "baselines", "--pplgate-report", "rep")
    res.assert_outcomes(passed=3)
    records = json.loads((gate.path / "rep" / "pplgate-results.json").read_text())["records"]
    kld = {r["variant"]: r["kld"]["reference"] for r in records if r.get("kld")}
    assert kld == {"rtn": "fp32", "rtn-stored": "file fp32.safetensors"}  # what each was compared with

    # another file at the same path (other K: other content) is protocol drift, never a silent comparison
    _save(tiny_model, ref, "--max-windows", "2", "--top-k", "32", "--tail-samples", "0")
    res = gate.runpytest(*GATE_ARGS, "baselines", "-k", "stored")
    res.assert_outcomes(failed=1)
    out = res.stdout.str()
    assert "PROTOCOL DRIFT" in out and "reference.content_sha256" in out and "reference.top_k: '64' -> '32'" in out


def test_a_missing_or_foreign_reference_file_is_the_entry_s_error(gate, tiny_model):
    _write(gate, tiny_model, ref="refs/none.safetensors")
    res = gate.runpytest(*GATE_ARGS, "baselines", "--update-baselines")
    res.assert_outcomes(passed=2, failed=1)  # the other entries are measured (and, with an error, not written)
    out = res.stdout.str()
    assert "reference file" in out and "none.safetensors does not exist" in out
    assert "pplgate reference save --model MODEL --variant fp16 --out" in out

    _save(tiny_model, gate.path / "baselines" / "refs" / "three.safetensors", "--max-windows", "3")
    _write(gate, tiny_model, ref="refs/three.safetensors")
    res = gate.runpytest(*GATE_ARGS, "baselines", "-k", "stored", "--update-baselines")
    res.assert_outcomes(failed=1)
    assert "holds 3 windows, this run scores 2" in res.stdout.str()


def test_a_malformed_stored_reference_is_a_collection_error(gate, tiny_model):
    f = _write(gate, tiny_model)
    f.write_text(f.read_text().replace("reference: {file: refs/fp32.safetensors}", "reference: {path: x}"))
    res = gate.runpytest(*GATE_ARGS, "baselines")
    out = res.stdout.str()
    assert "invalid baseline file" in out and "a stored reference is `reference: {file: PATH}`" in out
