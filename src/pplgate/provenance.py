"""Provenance of a measurement: when, where (device name, weights layout), with which software and which command."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import shlex
import subprocess
import sys
from collections import Counter
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def git_commit(directory: str) -> str | None:
    """``HEAD`` of the repository holding ``directory`` (``+dirty`` when tracked files changed).

    Where the tree is a copy without ``.git`` (e.g. a CI artifact), ``$PPLGATE_GIT_COMMIT`` names it.
    """
    return os.environ.get("PPLGATE_GIT_COMMIT") or _git_head(directory)


@lru_cache(maxsize=8)
def _git_head(directory: str) -> str | None:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=directory, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=directory,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "") if head else None


@lru_cache(maxsize=1)
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def cpu_facts() -> dict[str, Any]:
    """What decides CPU arithmetic beside the code: the instruction set torch's kernels dispatch to
    (``cpu_isa``), the BLAS (``blas``) and the number of threads (``threads``)."""
    import torch

    blas = "mkl" if torch.backends.mkl.is_available() else "other"
    return {"cpu_isa": torch.backends.cpu.get_cpu_capability(), "blas": blas, "threads": torch.get_num_threads()}


def device_name(device: str) -> str:
    """Human-readable name of the device a measurement ran on."""
    if device.startswith("cuda"):
        try:
            import torch

            return torch.cuda.get_device_name(torch.device(device))
        except Exception:  # pragma: no cover - only without a usable GPU
            return device
    return cpu_model()


def collect(
    *,
    device: str,
    rootdir: str | Path,
    wall_time_s: float,
    prepare_time_s: float,
    origin: str,
    args: list[str] | tuple[str, ...] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The provenance block stored beside every recorded measurement."""
    import pplgate

    prov: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        "pplgate": pplgate.__version__,
        "git_commit": git_commit(str(rootdir)),
        "torch": _version("torch"),
        "transformers": _version("transformers"),
        "autoawq": _version("autoawq"),
        "python": platform.python_version(),
        "device": device,
        "device_name": device_name(device),
        **({"host_cpu": cpu_model()} if device.startswith("cuda") else cpu_facts()),
        "command": shlex.join(["pytest", *(sys.argv[1:] if args is None else args)]),
        "wall_time_s": round(wall_time_s, 2),
        "prepare_time_s": round(prepare_time_s, 2),
        "origin": origin,
    }
    if extra:
        prov.update(extra)
    return prov


def device_layout(model: Any) -> dict[str, Any]:
    """Where a model's weights live, for provenance: ``{"cuda:0": n_params, ...}`` and single/split."""
    counts: Counter[str] = Counter()
    for p in model.parameters():
        counts[str(p.device)] += p.numel()
    return {
        "params_by_device": dict(sorted(counts.items())),
        "placement": "split" if len(counts) > 1 else "single",
        "visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }
