"""gate/ is pure Python: importing it (and judging, reporting) loads neither torch nor pytest."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import pplgate

SRC = str(Path(pplgate.__file__).resolve().parents[1])

PROBE = """
import json, sys
import pplgate.gate.drift, pplgate.gate.record, pplgate.gate.reports, pplgate.gate.rules
import pplgate.gate.spec, pplgate.gate.stats, pplgate.gate.store, pplgate.gate.verdict
from pplgate.gate.spec import parse_baseline
spec = parse_baseline(sys.argv[1], known_kinds=["fp32"])  # reading a file imports ruamel, nothing more
loaded = {m.split(".")[0] for m in sys.modules}
print(json.dumps(sorted(m for m in ("torch", "pytest", "transformers", "awq", "matplotlib") if m in loaded)))
"""


def test_gate_imports_neither_torch_nor_pytest(tmp_path):
    baseline = tmp_path / "m.yaml"
    baseline.write_text(
        "schema_version: 1\nmodel: {name: m, source: org/m}\nprofiles:\n  cpu:\n    device: cpu\n    variants:\n"
        "      fp32:\n        kind: fp32\n        tolerance: [{type: absolute, max_delta: 0.1}]\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(baseline)], env=env, capture_output=True, text=True, check=True
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_package_names_still_resolve_lazily():
    """``pplgate``'s public names load on first use (PEP 562), so the gate can import ``pplgate.errors`` alone."""
    for name in pplgate.__all__:
        assert getattr(pplgate, name) is not None, name
    assert set(pplgate.__all__) <= set(dir(pplgate))
    with pytest.raises(AttributeError, match="no_such_name"):
        pplgate.no_such_name  # noqa: B018
