"""pytest-xdist: one worker per GPU (or per group of ``--pplgate-gpus-per-worker`` GPUs)."""

from __future__ import annotations

from typing import Any

import pytest

from pplgate.pytest_plugin.gpus import assign_gpus, pin_worker, visible_gpu_ids


def pin_this_worker(config: pytest.Config) -> None:
    """In an xdist worker: keep only this worker's GPUs, before anything touches CUDA here."""
    workerinput = getattr(config, "workerinput", None)
    if workerinput and workerinput.get("pplgate_gpu_ids"):
        pin_worker(
            workerinput["workerid"],
            int(workerinput["workercount"]),
            workerinput["pplgate_gpu_ids"].split(","),
            int(workerinput["pplgate_gpus_per_worker"]),
        )


def hand_out_gpus(node: Any) -> None:
    """Controller side: give each worker the visible GPU list; the worker pins itself in configure."""
    gpu_ids = visible_gpu_ids()
    k = node.config.getoption("--pplgate-gpus-per-worker")
    if not gpu_ids:
        return  # CPU-only run: nothing to pin
    n_workers = int(node.workerinput.get("workercount") or node.config.option.numprocesses)
    assign_gpus(0, n_workers, gpu_ids, k)  # fail in the controller, with the fix, if there are too few
    node.workerinput["pplgate_gpu_ids"] = ",".join(gpu_ids)
    node.workerinput["pplgate_gpus_per_worker"] = k
