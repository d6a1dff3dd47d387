"""Issue #24: paths in a baseline entry's params resolve against the baseline file's folder, like model.source.

Real YAML files in a folder that is not the current directory; parse_baseline gives the params the kinds get.
"""

from __future__ import annotations

import os
import textwrap

import pytest

from pplgate.gate.param_paths import resolve_param_paths
from pplgate.gate.spec import parse_baseline

BASELINE = textwrap.dedent(
    """\
    schema_version: 1
    model: {name: m, source: ./model}
    profiles:
      cpu:
        device: cpu
        variants:
          recipe:
            kind: llmc-recipe
            params: {recipe_file: recipes/w4.yaml, calibration: {source: ../data/cal.jsonl, n_samples: 4}}
            tolerance: [{type: absolute, max_delta: 0.1}]
          team:
            kind: user
            params: {entry: "team_q:quantize", config: "$TEAM_DIR/q.json", calibration: cal.txt}
            tolerance: [{type: absolute, max_delta: 0.1}]
          env:
            kind: awq
            params: {calibration: {path: $PPLGATE_CALIBRATION}}
            tolerance: [{type: absolute, max_delta: 0.1}]
          ckpt:
            kind: awq-checkpoint
            params: {checkpoint: ./ckpt}
            tolerance: [{type: absolute, max_delta: 0.1}]
          hub:
            kind: awq-checkpoint
            params: {checkpoint: org/awq-model}
            tolerance: [{type: absolute, max_delta: 0.1}]
    """
)
KINDS = ("llmc-recipe", "user", "awq", "awq-checkpoint")


def test_relative_param_paths_resolve_against_the_baseline_folder(tmp_path, monkeypatch):
    folder = tmp_path / "repo" / "baselines"
    folder.mkdir(parents=True)
    (folder / "m.yaml").write_text(BASELINE)
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # pytest run from another directory: the current directory must not count
    monkeypatch.setenv("TEAM_DIR", "team")  # a $VAR whose value is relative: the baseline folder's, like model.source
    monkeypatch.delenv("PPLGATE_CALIBRATION", raising=False)  # unset: left for the kind (shared-folder lookup)
    spec = parse_baseline(folder / "m.yaml", known_kinds=KINDS)
    v = spec.profiles["cpu"].variants
    assert v["recipe"].params == {
        "recipe_file": str(folder / "recipes" / "w4.yaml"),
        "calibration": {"source": str(tmp_path / "repo" / "data" / "cal.jsonl"), "n_samples": 4},
    }
    assert v["team"].params == {
        "entry": "team_q:quantize",
        "config": str(folder / "team" / "q.json"),
        "calibration": str(folder / "cal.txt"),
    }
    assert v["env"].params == {"calibration": {"path": "$PPLGATE_CALIBRATION"}}
    assert v["ckpt"].params == {"checkpoint": str(folder / "ckpt")}
    assert v["hub"].params == {"checkpoint": "org/awq-model"}  # a hub id stays one
    assert spec.resolve_path(spec.model.source) == str(folder / "model")  # the same rule as the model source


@pytest.mark.parametrize(
    "value",
    ["pileval", "default", "hf:mit-han-lab/pile-val-backup:validation", "/abs/cal.jsonl", "$PPLGATE_CALIBRATION"],
)
def test_sources_that_are_no_relative_paths_are_left_as_written(value, tmp_path, monkeypatch):
    monkeypatch.setenv("PPLGATE_CALIBRATION", "/shared/cal.jsonl")  # absolute: the kind expands it as before
    assert resolve_param_paths({"calibration": value}, tmp_path) == {"calibration": value}


def test_a_missing_recipe_file_is_reported_at_its_absolute_path(tmp_path, monkeypatch):
    from pplgate.errors import VariantError
    from pplgate.models.registry import make_variant

    folder = tmp_path / "baselines"
    folder.mkdir()
    monkeypatch.chdir(tmp_path)
    params = resolve_param_paths({"recipe_file": "../recipes/./w4.yaml"}, folder)
    with pytest.raises(VariantError, match=f"recipe_file {tmp_path / 'recipes' / 'w4.yaml'} does not exist"):
        make_variant("llmc-recipe", params)
    # a path from the command line (no baseline file) resolves against the current directory, named absolute
    with pytest.raises(VariantError, match=f"recipe_file {tmp_path / 'w4.yaml'} does not exist"):
        make_variant("llmc-recipe", {"recipe_file": "w4.yaml"})
    with pytest.raises(VariantError, match=f"config file {tmp_path / 'q.json'} does not exist"):
        make_variant("user", {"entry": "x:y", "config": "q.json"}).fingerprint()
    with pytest.raises(VariantError, match=f"calibration file {tmp_path / 'c.jsonl'} does not exist"):
        make_variant("awq", {"calibration": "c.jsonl"}).fingerprint()
    assert os.getcwd() == str(tmp_path)
