"""GPU placement for xdist workers, on simulated device lists (no GPU needed)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from pplgate.errors import PlacementError
from pplgate.provenance import device_layout
from pplgate.pytest_plugin.gpus import assign_gpus, nvml_gpu_count, pin_worker, visible_gpu_ids, worker_index


def test_visible_ids_from_env_or_count():
    assert visible_gpu_ids({"CUDA_VISIBLE_DEVICES": "2,5"}) == ["2", "5"]
    assert visible_gpu_ids({"CUDA_VISIBLE_DEVICES": ""}) == []
    assert visible_gpu_ids({"CUDA_VISIBLE_DEVICES": "-1"}) == []
    assert visible_gpu_ids({}, device_count=3) == ["0", "1", "2"]


def test_no_nvml_library_means_no_answer():
    assert nvml_gpu_count("libpplgate-no-such-nvml.so.1") is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="NVML's GPU count: needs an NVIDIA GPU")
def test_nvml_lists_the_gpus_cuda_sees_without_importing_torch():
    code = (
        "import sys; from pplgate.pytest_plugin.gpus import nvml_gpu_count, visible_gpu_ids; "
        "print(nvml_gpu_count(), ','.join(visible_gpu_ids()), 'torch' in sys.modules)"
    )
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    count = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.cuda.device_count())"],
        env=env, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    assert out.split() == [count, ",".join(str(i) for i in range(int(count))), "False"]


def test_worker_index():
    assert worker_index("gw0") == 0
    assert worker_index("gw12") == 12
    with pytest.raises(PlacementError):
        worker_index("master")


@pytest.mark.parametrize("n_gpus,n_workers,k", [(2, 2, 1), (4, 4, 1), (4, 2, 2), (8, 2, 4), (8, 3, 2)])
def test_assignment_is_disjoint_and_covers_slices(n_gpus, n_workers, k):
    ids = [str(10 + i) for i in range(n_gpus)]  # not 0-based: ids come from CUDA_VISIBLE_DEVICES
    parts = [assign_gpus(i, n_workers, ids, k) for i in range(n_workers)]
    assert all(len(p) == k for p in parts)
    flat = [g for p in parts for g in p]
    assert len(set(flat)) == len(flat) == n_workers * k
    assert flat == ids[: n_workers * k]


def test_too_few_gpus_is_a_clear_error():
    with pytest.raises(PlacementError, match=r"3 workers x 1 GPU\(s\) need 3 GPUs, but only 2.*use -n 2"):
        assign_gpus(0, 3, ["0", "1"], 1)
    with pytest.raises(PlacementError, match=">= 1"):
        assign_gpus(0, 1, ["0"], 0)


def test_pin_worker_sets_visible_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    assert pin_worker("gw1", 2, ["0", "1", "2", "3"], 2) == ["2", "3"]
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "2,3"


def test_device_layout_counts_params():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    layout = device_layout(model)
    assert layout["params_by_device"] == {"cpu": 4 * 3 + 3 + 3 * 2 + 2}
    assert layout["placement"] == "single"


def test_device_map_needs_cuda_and_a_known_strategy():
    from pplgate.errors import ModelLoadError
    from pplgate.models.source import ModelSource, load_model

    src = ModelSource("unused-model-id")
    with pytest.raises(ModelLoadError, match="must be one of auto, balanced, sequential"):
        load_model(src, "fp16", device_map="everywhere")
    if not torch.cuda.is_available():
        with pytest.raises(ModelLoadError, match="no CUDA device"):
            load_model(src, "fp16", device_map="balanced")
