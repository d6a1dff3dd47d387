"""Where it moved (issue 29 part 3), end to end: real pytest sessions (pytester) on the tiny Llama with the GPT-2
tokenizer. An entry compared with a reference entry records its per-module output error (``recorded: layers:``);
a failure or a drift of it names the modules whose error moved most against that record."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from support import GATE_ARGS, gate_project, tiny_baseline

from pplgate.gate.layers import NO_PROFILE, WHERE
from pplgate.gate.spec import parse_baseline
from pplgate.pytest_plugin.items import known_kinds

pytest_plugins = ["pytester"]

# the test-only kind test-one-module: fp32 with a seeded perturbation of one module type (params.module) in every
# layer; $TEST_ONE_MODULE perturbs another one without changing the fingerprint (a bug the protocol cannot see)
CONFTEST = textwrap.dedent(
    """
    import os, time, torch
    from pplgate.models.registry import register
    from pplgate.models.variant import PreparedModel, Variant

    @register
    class OneModule(Variant):
        kind = "test-one-module"

        def fingerprint(self):
            return {"kind": self.kind, "module": self.params["module"], "scale": self.params["scale"]}

        def prepare(self, ctx):
            t0 = time.perf_counter()
            model = ctx.load("fp32", fresh=True)
            module = os.environ.get("TEST_ONE_MODULE", self.params["module"])
            gen = torch.Generator().manual_seed(1)
            with torch.no_grad():
                for name, p in model.named_parameters():
                    if f"{module}.weight" in name:
                        p.add_(torch.randn(p.shape, generator=gen) * self.params["scale"])
            return PreparedModel(model, "quantized", time.perf_counter() - t0)
    """
)

VARIANTS = """
  fp32:
    kind: fp32
    tolerance:
      - {type: absolute, max_delta: 0.001}
  onemod:
    kind: test-one-module
    params: {module: mlp.down_proj, scale: 0.01}
    reference: fp32
    tolerance:
      - {type: absolute, max_delta: 0.001}
"""


_RECORDED: dict[Path, str] = {}


@pytest.fixture
def gate(pytester: pytest.Pytester, monkeypatch, tiny_model) -> pytest.Pytester:
    """A project whose baseline file a real ``--update-baselines`` session recorded (in this process)."""
    gate_project(pytester, monkeypatch, CONFTEST)
    monkeypatch.delenv("TEST_ONE_MODULE", raising=False)
    (pytester.path / "baselines").mkdir()
    f = pytester.path / "baselines" / "tiny.yaml"
    if tiny_model not in _RECORDED:  # recorded once per model, by the first test
        f.write_text(tiny_baseline(tiny_model, VARIANTS))
        pytester.runpytest(*GATE_ARGS, "--update-baselines").assert_outcomes(passed=2)
        _RECORDED[tiny_model] = f.read_text()
    f.write_text(_RECORDED[tiny_model])
    return pytester


def entries(path: Path):
    return parse_baseline(path, known_kinds=[*known_kinds(), "test-one-module"]).profiles["cpu"].variants


def test_the_record_holds_the_profile_and_a_pass_keeps_the_file(gate):
    f = gate.path / "baselines" / "tiny.yaml"
    recorded = f.read_text()
    variants = entries(f)
    assert variants["fp32"].recorded.layers is None and "layers:" not in recorded.split("onemod:")[0]
    layers = variants["onemod"].recorded.layers
    assert set(layers) == {
        *(f"layers.0.self_attn.{p}_proj" for p in "qkvo"),
        *(f"layers.0.mlp.{p}_proj" for p in ("gate", "up", "down")),
    }  # the tied lm_head is no decoder-layer module
    assert layers["layers.0.mlp.down_proj"] > 0.01 and layers["layers.0.self_attn.q_proj"] == 0
    assert "      layers:\n            mlp.down_proj: [" in recorded and "    self_attn.q_proj: [0.0]\n" in recorded
    assert 0 < variants["onemod"].recorded.provenance["layers_s"] < 5  # its cost, in the provenance
    res = gate.runpytest(*GATE_ARGS, "--pplgate-report", "rep")
    res.assert_outcomes(passed=2)
    assert f.read_text() == recorded
    recs = {r["variant"]: r for r in json.loads((gate.path / "rep" / "pplgate-results.json").read_text())["records"]}
    assert "layers" not in recs["fp32"]
    assert recs["onemod"]["layers"]["mlp.down_proj"] == [layers["layers.0.mlp.down_proj"]]
    assert "moved" not in recs["onemod"]  # a pass says nothing about where it moved


def test_a_drift_or_a_regression_names_the_modules_that_moved(gate, monkeypatch):
    f = gate.path / "baselines" / "tiny.yaml"
    recorded = f.read_text()
    f.write_text(recorded.replace("params: {module: mlp.down_proj,", "params: {module: mlp.up_proj,"))
    res = gate.runpytest(*GATE_ARGS, "--pplgate-report", "rep", "-k", "onemod")
    res.assert_outcomes(failed=1)
    out = res.stdout.str()
    assert "PROTOCOL DRIFT" in out and WHERE in out
    block = out.split(WHERE)[1].split("=====")[0]
    assert "layer 0 mlp.up_proj: output error 0 -> " in block and "layer 0 mlp.down_proj: output error 0." in block
    assert "self_attn" not in block  # the modules that did not move are not named
    md = (gate.path / "rep" / "pplgate-summary.md").read_text()
    assert WHERE in md and "layer 0 mlp.up_proj: output error 0 -> " in md
    assert "per-layer output error plot" in md and list((gate.path / "rep").glob("*-layers.png"))
    f.write_text(recorded)
    monkeypatch.setenv("TEST_ONE_MODULE", "self_attn.v_proj")  # same fingerprint, another module perturbed
    res = gate.runpytest(*GATE_ARGS, "-k", "onemod")
    res.assert_outcomes(failed=1)
    out = res.stdout.str()
    assert "PERPLEXITY" in out and WHERE in out
    lines = out.split(WHERE)[1].splitlines()[1:3]
    assert {ln.split(":")[0].strip() for ln in lines} == {"layer 0 self_attn.v_proj", "layer 0 mlp.down_proj"}
    start = recorded.index("\n          layers:\n", recorded.index("onemod:")) + 1
    end = recorded.index("          provenance:", start)
    f.write_text(recorded[:start] + recorded[end:])  # a record from before profiles were recorded
    res = gate.runpytest(*GATE_ARGS, "-k", "onemod")
    res.assert_outcomes(failed=1)
    assert NO_PROFILE in res.stdout.str() and WHERE not in res.stdout.str()
