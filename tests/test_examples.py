"""The examples' loops, run for real (pytest sessions in a copy of each example).

examples/my-quantizer (collected YAML entries): pass -> change the quantizer's code -> the gate fails
with the paired explanation -> --update-baselines, whose entries pass in that session. Changed code
re-quantizes; unchanged code hits the quantization cache.

examples/fixture-tests (a parametrized test with the ppl_* fixtures): the committed entries pass ->
a code change fails with the paired explanation -> --update-baselines -> without the file, the first
run records both entries and fails.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from support import need_module

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "my-quantizer"
FIXTURE_EXAMPLE = EXAMPLE.parent / "fixture-tests"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """One cache dir for both loops: the second starts with SmolLM2's base model and tokens cached (the
    quantization entries of the two examples' own quantizers never collide: their code differs)."""
    return tmp_path_factory.mktemp("example-cache")


def _gate(where: Path, cache: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # the copy's my_quantizer wins over the installed one; the cache dir by variable (a "--opt PATH" pair of
    # a plugin option would take part in pytest's rootdir search as if PATH were a test path)
    path = os.pathsep.join(p for p in (str(where), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path, "PPLGATE_CACHE_DIR": str(cache)}
    env.pop("PYTEST_ADDOPTS", None)
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args]
    return subprocess.run(cmd, cwd=where, env=env, capture_output=True, text=True, timeout=900)


def test_the_team_loop(tmp_path, cache):
    need_module("my_quantizer", "pip install --no-deps -e examples/my-quantizer")
    work = tmp_path / "my-quantizer"
    shutil.copytree(EXAMPLE, work, ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))

    first = _gate(work, cache)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "2 passed" in first.stdout and "quantized" in first.stdout

    code = work / "my_quantizer" / "__init__.py"
    code.write_text(code.read_text().replace("zero = (-lo / scale).round()", "zero = (-lo / scale).floor()"))
    changed = _gate(work, cache)
    out = changed.stdout
    assert changed.returncode == 1, out
    assert "smollm2-135m-instruct[cpu-mine-w4g64]" in out and "PERPLEXITY REGRESSION" in out
    assert "paired per-window" in out or "per-window" in out
    assert 'pytest --update-baselines "baselines/smollm2.yaml::smollm2-135m-instruct[cpu-mine-w4g64]"' in out
    assert "1 failed, 1 passed" in out

    # the code is unchanged since the failing run: the update is served by the quantization cache, and the
    # entries it writes pass in that same session (a further plain run would measure the same numbers again)
    updated = _gate(work, cache, "--update-baselines")
    assert updated.returncode == 0 and "2 passed" in updated.stdout, updated.stdout
    assert "cpu/mine-w4g64:" in updated.stdout
    assert re.search(r"cpu-mine-w4g64 .* UPDATED .* cache\s*$", updated.stdout, re.M), updated.stdout
    assert (EXAMPLE / "baselines" / "smollm2.yaml").read_text() != (work / "baselines" / "smollm2.yaml").read_text()


def test_the_fixture_tests_loop(tmp_path, cache):
    from pplgate.gate.spec import parse_baseline

    work = tmp_path / "fixture-tests"
    shutil.copytree(FIXTURE_EXAMPLE, work, ignore=shutil.ignore_patterns("__pycache__", "*.lock"))
    baseline = work / "baselines" / "test_smollm2.yaml"
    committed = parse_baseline(baseline, known_kinds=["fp32"])

    first = _gate(work, cache)
    assert first.returncode == 0 and "2 passed" in first.stdout, first.stdout + first.stderr

    code = work / "clipped_rtn.py"
    code.write_text(code.read_text().replace("zero = (-lo / scale).round()", "zero = (-lo / scale).floor()"))
    changed = _gate(work, cache)
    out = changed.stdout
    assert changed.returncode == 1 and "1 failed, 1 passed" in out, out
    assert "pplgate: smollm2-clipped-w4g64 (test_smollm2.py::test_perplexity[clipped-w4g64])" in out
    assert "PERPLEXITY REGRESSION" in out and "paired per-window dNLL over 1 window:" in out
    assert 'pytest --update-baselines "test_smollm2.py::test_perplexity[clipped-w4g64]"' in out

    updated = _gate(work, cache, "--update-baselines")
    assert updated.returncode == 0 and "tests/smollm2-clipped-w4g64:" in updated.stdout, updated.stdout

    baseline.unlink()  # a first run: both entries recorded, both tests fail (as pytest-regressions does)
    fresh = _gate(work, cache)
    assert fresh.returncode == 1 and "2 failed" in fresh.stdout and "Recorded it now" in fresh.stdout, fresh.stdout
    again = parse_baseline(baseline, known_kinds=["fp32"])
    assert sorted(again.tests) == sorted(committed.tests)
    ppl = again.tests["smollm2-fp32"].recorded.ppl
    assert abs(ppl - committed.tests["smollm2-fp32"].recorded.ppl) <= 0.001
