"""The gate end to end under pytest-benchmark: one ``pytest -m smoke|gpu baselines`` process per round.

The cache is whatever ``$PPLGATE_CACHE_DIR`` holds (warm after the first round); ``bench/gate_speed.py``
is the cold-vs-warm benchmark with the phase breakdown. The tier follows the device: ``gpu`` on CUDA,
``smoke`` (the CPU tier) otherwise.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gate(benchmark, device, smollm2):
    marker = "gpu" if device.startswith("cuda") else "smoke"
    cmd = [sys.executable, "-m", "pytest", "-m", marker, "baselines", "-p", "no:cacheprovider", "-q"]
    subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)  # warms the caches; not timed

    def run():
        return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True).returncode

    rc = benchmark.pedantic(run, rounds=2, iterations=1)
    benchmark.extra_info.update(marker=marker, exit_code=rc)
