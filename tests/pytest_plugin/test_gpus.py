"""GPU placement for xdist workers, on simulated device lists (no GPU needed)."""

from __future__ import annotations

import os

import pytest
import torch

from pplgate.errors import PlacementError
from pplgate.provenance import device_layout
from pplgate.pytest_plugin.gpus import assign_gpus, pin_worker, visible_gpu_ids, worker_index


def test_visible_ids_from_env_or_count():
    assert visible_gpu_ids({"CUDA_VISIBLE_DEVICES": "2,5"}) == ["2", "5"]
    assert visible_gpu_ids({"CUDA_VISIBLE_DEVICES": ""}) == []
    assert visible_gpu_ids({"CUDA_VISIBLE_DEVICES": "-1"}) == []
    assert visible_gpu_ids({}, device_count=3) == ["0", "1", "2"]


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
