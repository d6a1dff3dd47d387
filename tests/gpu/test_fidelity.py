"""GPU fidelity: pplgate's engine vs AutoAWQ's own ``evaluate_perplexity`` on the same loaded model.

Runs the installed AutoAWQ function (see ``tests/support_autoawq_loop.py``) and pplgate's measurement
(the :class:`~pplgate.measure.Measurer`, batched engine) on SmolLM2-135M-Instruct in fp16 and AWQ-quantized
(w4 g64 GEMM, through the ``awq`` variant, i.e. AutoAWQ's real quantized modules), in one process and on
the same model object; the PPLs must agree within 1e-3 relative.

Marker ``fidelity``, not ``gpu``: these check pplgate's engine against AutoAWQ's loop, not the user's
model, so they run in the workflow's scheduled/manual job (``ci/gpu.sh`` with
``PPLGATE_GPU_MARKERS="gpu or fidelity"``), not in every pre-merge ``pytest -m gpu`` (41 s of its 97 s
on an H200, issue 13). Select them with ``pytest -m fidelity tests/gpu``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from support import need_module, skip_or_fail

from pplgate.measure import Measurer
from pplgate.models.source import resolve_source
from pplgate.protocol.dataset import load_wikitext2_test

pytestmark = [
    pytest.mark.fidelity,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="GPU fidelity check: no CUDA device here"),
]
REL_TOL = 1e-3


@pytest.fixture(scope="module")
def smollm2():
    need_module("awq", "pip install --no-deps autoawq==0.2.9")  # AutoAWQ's own reference loop
    src = resolve_source(None)
    rows, _ = load_wikitext2_test()
    return src, rows, Measurer()


def _compare(measurer, src, rows, record_property, label, kind, params):
    from support_autoawq_loop import autoawq_perplexity

    request = dict(kind=kind, params=params, device="cuda")
    prepared = measurer.prepare(src, **request)  # the model measure() scores next, kept for AutoAWQ's loop
    ours = measurer.measure(src, **request, batch_size=8).result
    tok = measurer.tokens(src, None)[0]
    ref, how = autoawq_perplexity(prepared.model, tok, rows)
    rel = abs(ours.ppl - ref) / ref
    for k, v in {"pplgate_ppl": ours.ppl, "autoawq_ppl": ref, "rel_diff": rel, "autoawq_loop": how}.items():
        record_property(f"{label}_{k}", v)
    print(f"\n{label}: pplgate {ours.ppl:.6f}  AutoAWQ ({how}) {ref:.6f}  rel diff {rel:.2e}")
    assert ours.n_windows == ours.n_windows_total == 148
    assert rel <= REL_TOL, f"{label}: pplgate {ours.ppl} vs AutoAWQ {ref} (rel {rel:.2e} > {REL_TOL})"
    return prepared


def test_fp16_matches_autoawq_loop(smollm2, record_property):
    src, rows, measurer = smollm2
    _compare(measurer, src, rows, record_property, "fp16", "fp16", {})
    measurer.free(set())


def test_awq_matches_autoawq_loop(smollm2, record_property):
    src, rows, measurer = smollm2
    if not os.environ.get("PPLGATE_CALIBRATION"):
        skip_or_fail("set PPLGATE_CALIBRATION to a local calibration file (the hub's pileval is used otherwise)")
    from pplgate.gate.spec import parse_baseline
    from pplgate.models.registry import known_kinds

    # the GPU gate's own AWQ entry (same params, so the gate's cache entry is reused)
    path = Path(__file__).resolve().parents[2] / "baselines" / "smollm2-135m-instruct.yaml"
    spec = parse_baseline(path, known_kinds=known_kinds())
    params = spec.profiles["gpu"].variants["awq-w4g64"].params
    prepared = _compare(measurer, src, rows, record_property, "awq", "awq", params)
    record_property("awq_origin", prepared.origin)  # "cache" when the gate ran first
    measurer.free(set())
