"""Issue #24: a baseline's recipe_file resolves against the baseline file's folder in a real gate session run
from the project root (pytester), the file keeps the relative path it was written with, and a missing file is
reported at its absolute path."""

from __future__ import annotations

import pytest
from support import GATE_ARGS, gate_project, tiny_baseline

pytest_plugins = ["pytester"]

RECIPE = """\
quant_stage:
  quant_modifiers:
    QuantizationModifier:
      targets: [Linear]
      ignore: [lm_head]
      config_groups:
        group_0:
          targets: [Linear]
          weights: {num_bits: 8, type: int, symmetric: true, strategy: channel}
"""
ENTRY = """
w8:
  kind: llmc-recipe
  params: {recipe_file: ../quant/w8.yaml}
  tolerance:
    - {type: absolute, max_delta: 0.01}
"""


def test_recipe_file_next_to_the_baseline_is_used_from_the_project_root(pytester, monkeypatch, tiny_model):
    pytest.importorskip("llmcompressor")
    gate_project(pytester, monkeypatch, "")
    root = pytester.path  # baselines/ holds only baseline files: the recipe lives beside it
    (root / "baselines").mkdir()
    (root / "quant").mkdir()
    (root / "quant" / "w8.yaml").write_text(RECIPE)
    f = root / "baselines" / "tiny.yaml"
    f.write_text(tiny_baseline(tiny_model, ENTRY, max_windows=2))
    args = (*GATE_ARGS, "--pplgate-cache", "off", "baselines")
    res = pytester.runpytest(*args, "--update-baselines")  # run in pytester.path: ../quant/w8.yaml is not there
    res.assert_outcomes(passed=1)
    assert "recipe_file: ../quant/w8.yaml" in f.read_text()  # the file keeps what was written, not the absolute path
    pytester.runpytest(*args).assert_outcomes(passed=1)

    (root / "quant" / "w8.yaml").unlink()
    res = pytester.runpytest(*args)
    assert res.ret != pytest.ExitCode.OK
    res.stdout.fnmatch_lines([f"*recipe_file {root / 'quant' / 'w8.yaml'} does not exist*"])
