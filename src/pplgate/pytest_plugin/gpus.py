"""GPU placement for multi-GPU gates: one pytest-xdist worker per GPU (or per group of GPUs).

The controller lists the GPUs it may use (``CUDA_VISIBLE_DEVICES``, else the driver's count through
NVML, else torch's) and hands the list to each worker; a worker ``gwN`` keeps GPUs ``[N*k, (N+1)*k)``
of that list (``k`` = ``--pplgate-gpus-per-worker``) by setting ``CUDA_VISIBLE_DEVICES`` before CUDA
starts in it.
A model bigger than one GPU loads with ``device_map="auto"`` across the GPUs its worker holds.
"""

from __future__ import annotations

import ctypes
import os
import re
import sys

from pplgate.errors import PlacementError

GPUS_PER_WORKER_ENV = "PPLGATE_GPUS_PER_WORKER"


NVML_SUCCESS, NVML_DEVICE_MIG_ENABLE = 0, 1


def visible_gpu_ids(environ: dict[str, str] | None = None, device_count: int | None = None) -> list[str]:
    """GPU ids this process may use: ``CUDA_VISIBLE_DEVICES`` if set, else ``0..device_count-1``.

    Without ``device_count`` the count comes from :func:`nvml_gpu_count` and, where that has no answer,
    from torch. The xdist controller asks before it starts its workers, and importing torch and
    starting CUDA there delayed every worker's start by ~2 s.
    """
    env = os.environ if environ is None else environ
    raw = env.get("CUDA_VISIBLE_DEVICES")
    if raw is not None:
        return [x.strip() for x in raw.split(",") if x.strip() and x.strip() != "-1"]
    if device_count is None:
        device_count = nvml_gpu_count()
    if device_count is None:
        import torch

        device_count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return [str(i) for i in range(device_count)]


def nvml_gpu_count(library: str = "libnvidia-ml.so.1") -> int | None:
    """The NVIDIA driver's GPU count through NVML: no torch import, no CUDA context.

    None where NVML is not there or fails, or where a GPU is in MIG mode (CUDA then counts MIG
    instances, not GPUs): the caller asks torch instead.
    """
    try:
        nvml = ctypes.CDLL(library)
    except OSError:
        return None
    try:
        if nvml.nvmlInit_v2() != NVML_SUCCESS:
            return None
    except AttributeError:  # pragma: no cover - a library without the v2 API
        return None
    try:
        count = ctypes.c_uint()
        if nvml.nvmlDeviceGetCount_v2(ctypes.byref(count)) != NVML_SUCCESS:
            return None
        for index in range(count.value):
            handle = ctypes.c_void_p()
            if nvml.nvmlDeviceGetHandleByIndex_v2(index, ctypes.byref(handle)) != NVML_SUCCESS:
                return None
            current, pending = ctypes.c_uint(), ctypes.c_uint()
            rc = nvml.nvmlDeviceGetMigMode(handle, ctypes.byref(current), ctypes.byref(pending))
            if rc == NVML_SUCCESS and current.value == NVML_DEVICE_MIG_ENABLE:
                return None  # other codes: MIG not supported on this GPU, so not in MIG mode
        return count.value
    finally:
        nvml.nvmlShutdown()


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
    torch = sys.modules.get("torch")  # not imported yet: CUDA cannot have started (and is not started here)
    if torch is not None and torch.cuda.is_initialized():
        raise PlacementError("CUDA was initialised before the worker could be pinned to its GPUs")
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(mine)
    return mine
