"""examples/my-quantizer: the loop a team lives in, run for real (pytest sessions in a copy of the example).

pass -> change the quantizer's code -> the gate fails with the paired explanation -> --update-baselines
-> pass again. Unchanged code hits the quantization cache; changed code re-quantizes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from support import need_module

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "my-quantizer"

pytestmark = pytest.mark.slow


def _gate(where: Path, cache: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # the copy's my_quantizer wins over the installed one; the cache dir by variable (a "--opt PATH" pair of
    # a plugin option would take part in pytest's rootdir search as if PATH were a test path)
    env = {**os.environ, "PYTHONPATH": str(where), "PPLGATE_CACHE_DIR": str(cache)}
    env.pop("PYTEST_ADDOPTS", None)
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args]
    return subprocess.run(cmd, cwd=where, env=env, capture_output=True, text=True, timeout=900)


def test_the_team_loop(tmp_path):
    need_module("my_quantizer", "pip install --no-deps -e examples/my-quantizer")
    work = tmp_path / "my-quantizer"
    shutil.copytree(EXAMPLE, work, ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    cache = tmp_path / "cache"

    first = _gate(work, cache)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "2 passed" in first.stdout and "quantized" in first.stdout

    again = _gate(work, cache)
    assert again.returncode == 0 and "cache" in again.stdout  # unchanged code: a cache hit

    code = work / "my_quantizer" / "__init__.py"
    code.write_text(code.read_text().replace("zero = (-lo / scale).round()", "zero = (-lo / scale).floor()"))
    changed = _gate(work, cache)
    out = changed.stdout
    assert changed.returncode == 1, out
    assert "smollm2-135m-instruct[cpu-mine-w4g64]" in out and "PERPLEXITY REGRESSION" in out
    assert "paired per-window" in out or "per-window" in out
    assert 'pytest --update-baselines "baselines/smollm2.yaml::smollm2-135m-instruct[cpu-mine-w4g64]"' in out
    assert "1 failed, 1 passed" in out

    updated = _gate(work, cache, "--update-baselines")
    assert updated.returncode == 0, updated.stdout
    assert "cpu/mine-w4g64:" in updated.stdout
    final = _gate(work, cache)
    assert final.returncode == 0 and "2 passed" in final.stdout
    assert (EXAMPLE / "baselines" / "smollm2.yaml").read_text() != (work / "baselines" / "smollm2.yaml").read_text()
