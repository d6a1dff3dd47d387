"""Issue #25 (fail fast): a ``user`` entry's module is imported and an llm-compressor ``recipe_file`` read at
COLLECTION, so a typo fails in seconds with the fix, before any model loads (real pytest sessions, pytester)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from support import FP32_ENTRY, GATE_ARGS, gate_project, tiny_baseline

pytest_plugins = ["pytester"]

QUANTIZER = "def quantize(model, tokenizer, calibration_texts):\n    return model\n"
USER_ENTRY = """
mine:
  kind: user
  params: {entry: "%s"}
  tolerance:
    - {type: absolute, max_delta: 0.01}
"""


def _project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tiny_model: Path, entry: str) -> Path:
    gate_project(pytester, monkeypatch, "")
    (pytester.path / "baselines").mkdir()
    pkg = pytester.path / "src" / "ffq"  # not importable from the root (the root conftest.py puts the root there)
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "quant.py").write_text(QUANTIZER)
    f = pytester.path / "baselines" / "tiny.yaml"
    f.write_text(tiny_baseline(tiny_model, FP32_ENTRY + entry, max_windows=1))
    return f


def test_a_user_module_that_does_not_import_fails_the_collection_with_the_fix(pytester, monkeypatch, tiny_model):
    """Without ``pythonpath = src`` the team's package in the repository does not import: the collection says so
    (no entry of the file runs, no model is measured); with it, the same file collects."""
    _project(pytester, monkeypatch, tiny_model, USER_ENTRY % "ffq.quant:quantize")
    t0 = time.perf_counter()
    res = pytester.runpytest(*GATE_ARGS, "baselines")
    seconds = time.perf_counter() - t0
    out = res.stdout.str()
    assert res.ret != pytest.ExitCode.OK, out  # a collection error: nothing ran
    res.assert_outcomes(errors=1)
    assert "profiles.cpu.variants.mine" in out and "entry 'ffq.quant:quantize' does not import" in out
    assert "pytest.ini: `pythonpath = .`" in out and "pip install -e" in out
    assert "measured ppl" not in out and "cpu-fp32" not in out  # the fp32 entry of the file was not measured first
    assert seconds < 20, seconds  # seconds: no model loaded, no text tokenized

    pytester.makeini("[pytest]\npythonpath = src\n")
    res = pytester.runpytest(*GATE_ARGS, "baselines", "--collect-only", "-q")
    assert res.ret == pytest.ExitCode.OK, res.stdout.str()
    res.stdout.fnmatch_lines(["*tiny[[]cpu-fp32[]]", "*tiny[[]cpu-mine[]]"])


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (USER_ENTRY % "ffq.quant:quantise", "module 'ffq.quant' has no attribute 'quantise'"),
        (
            USER_ENTRY.replace('"}', '", code_paths: [../helpers]}') % "ffq.quant:quantize",
            "code_paths entry '{root}/helpers' does not exist (resolved to {root}/helpers)",
        ),
        (
            USER_ENTRY.replace('"}', '", config: quant.yaml}') % "ffq.quant:quantize",
            "user: config file {root}/baselines/quant.yaml does not exist",
        ),
        (
            "\nw8:\n  kind: llmc-recipe\n  params: {recipe_file: ../quant/w8.yaml}\n"
            "  tolerance: [{type: absolute, max_delta: 0.01}]\n",
            "llmc-recipe: recipe_file {root}/quant/w8.yaml does not exist",
        ),
    ],
)
def test_typos_in_an_entry_fail_the_collection(pytester, monkeypatch, tiny_model, entry, message):
    """A wrong function name, a missing code_paths / config / recipe file: one collection error naming the entry
    and the resolved path (before, each one failed only after the other entries were measured)."""
    if "llmc-recipe" in entry:
        pytest.importorskip("llmcompressor")
    _project(pytester, monkeypatch, tiny_model, entry)
    pytester.makeini("[pytest]\npythonpath = src\n")
    res = pytester.runpytest(*GATE_ARGS, "baselines", "--collect-only", "-q")
    out = res.stdout.str()
    assert res.ret != pytest.ExitCode.OK, out
    assert message.format(root=pytester.path) in out, out
    assert "invalid baseline file" in out and ".variants." in out
