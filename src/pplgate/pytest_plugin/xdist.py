"""pytest-xdist: one worker per GPU (or per group of ``--pplgate-gpus-per-worker`` GPUs)."""

from __future__ import annotations

import atexit
import gc
from typing import Any

import pytest

from pplgate.pytest_plugin.gpus import assign_gpus, pin_worker, visible_gpu_ids


def configure_worker(config: pytest.Config) -> None:
    """In an xdist worker (else nothing): pin it to its GPUs, and make its exit quick."""
    pin_this_worker(config)
    quick_worker_exit(config)


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


def quick_worker_exit(config: pytest.Config) -> None:
    """In an xdist worker: freeze the garbage collector's objects when the process exits.

    The controller waits for its workers to exit before it reports. At shutdown CPython runs full
    collections over every object still alive (~400,000 in a worker that imported torch and
    transformers: 0.8 s on a 2-core CPU); frozen objects are skipped. atexit handlers, reference-count
    deallocation and finalizers still run; only objects kept alive by reference cycles are not
    collected, as for anything alive when a process ends.
    """
    if getattr(config, "workerinput", None) is not None:
        atexit.register(gc.freeze)


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


def gate_group(nodeid: str) -> str | None:
    """The model of a gate test's node id (``baselines/m.yaml::m[cpu-fp32]`` -> ``m``), else None."""
    file, sep, name = nodeid.partition("::")
    if not sep or not file.lower().endswith((".yaml", ".yml")) or "::" in name:
        return None
    return name.split("[", 1)[0] or None


def make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``--dist loadgroup`` that keeps a model's gate entries on one worker on every pytest version.

    pytest-xdist marks a grouped test by appending ``@<group>`` to its node id in the worker; with
    pytest's structured node ids (pytest 9.2) that mutation no longer takes effect and loadgroup
    silently falls back to per-test scheduling (pytest-dev/pytest-xdist#1386), so a model's variants
    would load it on several workers. Where the suffix is missing, a gate test's group is read from
    its node id (the model name, as its ``xdist_group`` says); other tests keep xdist's behaviour.
    """
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling

    class GateLoadGroupScheduling(LoadGroupScheduling):
        def _split_scope(self, nodeid: str) -> str:
            scope = super()._split_scope(nodeid)
            if scope != nodeid:  # xdist's own "@group" suffix is there: use it
                return scope
            model = gate_group(nodeid)
            return f"pplgate-model:{model}" if model else nodeid

    return GateLoadGroupScheduling(config, log)
