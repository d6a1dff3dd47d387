"""GPU placement for multi-GPU gates: one pytest-xdist worker per GPU (or per group of GPUs).

The controller lists the GPUs it may use (``CUDA_VISIBLE_DEVICES`` or all it sees) and hands the
list to each worker; a worker ``gwN`` keeps GPUs ``[N*k, (N+1)*k)`` of that list (``k`` =
``--pplgate-gpus-per-worker``) by setting ``CUDA_VISIBLE_DEVICES`` before CUDA starts in it.
A model bigger than one GPU loads with ``device_map="auto"`` across the GPUs its worker holds.
"""

from __future__ import annotations

import os
import re

from pplgate.errors import PlacementError

GPUS_PER_WORKER_ENV = "PPLGATE_GPUS_PER_WORKER"


def visible_gpu_ids(environ: dict[str, str] | None = None, device_count: int | None = None) -> list[str]:
    """GPU ids this process may use: ``CUDA_VISIBLE_DEVICES`` if set, else ``0..device_count-1``."""
    env = os.environ if environ is None else environ
    raw = env.get("CUDA_VISIBLE_DEVICES")
    if raw is not None:
        return [x.strip() for x in raw.split(",") if x.strip() and x.strip() != "-1"]
    if device_count is None:
        import torch

        device_count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return [str(i) for i in range(device_count)]


def worker_index(worker_id: str) -> int:
    """``gw3`` -> 3 (pytest-xdist worker ids)."""
    m = re.fullmatch(r"gw(\d+)", worker_id)
    if not m:
        raise PlacementError(f"not a pytest-xdist worker id: {worker_id!r}")
    return int(m.group(1))


def assign_gpus(index: int, n_workers: int, gpu_ids: list[str], gpus_per_worker: int = 1) -> list[str]:
    """The GPUs worker ``index`` of ``n_workers`` keeps: a disjoint slice of ``gpu_ids``."""
    if gpus_per_worker < 1:
        raise PlacementError(f"gpus per worker must be >= 1, got {gpus_per_worker}")
    need = n_workers * gpus_per_worker
    if need > len(gpu_ids):
        raise PlacementError(
            f"{n_workers} workers x {gpus_per_worker} GPU(s) need {need} GPUs, but only {len(gpu_ids)} "
            f"are visible ({','.join(gpu_ids) or 'none'}); use -n {max(1, len(gpu_ids) // gpus_per_worker)}"
        )
    return gpu_ids[index * gpus_per_worker : (index + 1) * gpus_per_worker]


def pin_worker(worker_id: str, n_workers: int, gpu_ids: list[str], gpus_per_worker: int = 1) -> list[str]:
    """Restrict this (worker) process to its GPUs; must run before CUDA is initialised here."""
    mine = assign_gpus(worker_index(worker_id), n_workers, gpu_ids, gpus_per_worker)
    try:
        import torch

        if torch.cuda.is_initialized():
            raise PlacementError("CUDA was initialised before the worker could be pinned to its GPUs")
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(mine)
    return mine
