"""GPU fidelity: pplgate's engine vs AutoAWQ's own ``evaluate_perplexity`` on the same loaded model.

Runs the installed AutoAWQ function (see ``pplgate.reference``) and pplgate's batched engine on
SmolLM2-135M-Instruct in fp16 and AWQ-quantized (w4 g64 GEMM, through the ``awq`` variant, i.e.
AutoAWQ's real quantized modules), in one process; the PPLs must agree within 1e-3 relative.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from pplgate_testutils import need_module, skip_or_fail

from pplgate.data import load_canonical_text, load_wikitext2_test
from pplgate.engine import evaluate_perplexity, tokenize_canonical
from pplgate.models import load_model, load_tokenizer, resolve_source

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="GPU fidelity check: no CUDA device here"),
]
REL_TOL = 1e-3


@pytest.fixture(scope="module")
def smollm2():
    need_module("awq", "pip install --no-deps autoawq==0.2.9")  # AutoAWQ's own reference loop
    src = resolve_source(None)
    rows, _ = load_wikitext2_test()
    return src, load_tokenizer(src), rows, load_canonical_text()


def _compare(model, tok, rows, text, record_property, label):
    from pplgate.reference import autoawq_perplexity

    ours = evaluate_perplexity(model, tokenize_canonical(tok, text.text), text, batch_size=8, progress=False)
    ref, how = autoawq_perplexity(model, tok, rows)
    rel = abs(ours.ppl - ref) / ref
    for k, v in {"pplgate_ppl": ours.ppl, "autoawq_ppl": ref, "rel_diff": rel, "autoawq_loop": how}.items():
        record_property(f"{label}_{k}", v)
    print(f"\n{label}: pplgate {ours.ppl:.6f}  AutoAWQ ({how}) {ref:.6f}  rel diff {rel:.2e}")
    assert ours.n_windows == ours.n_windows_total == 148
    assert rel <= REL_TOL, f"{label}: pplgate {ours.ppl} vs AutoAWQ {ref} (rel {rel:.2e} > {REL_TOL})"


def test_fp16_matches_autoawq_loop(smollm2, record_property):
    src, tok, rows, text = smollm2
    model = load_model(src, "fp16", "cuda")
    _compare(model, tok, rows, text, record_property, "fp16")


def test_awq_matches_autoawq_loop(smollm2, record_property):
    from pplgate.variants import ModelContext, make_variant

    src, tok, rows, text = smollm2
    if not os.environ.get("PPLGATE_CALIBRATION"):
        skip_or_fail("set PPLGATE_CALIBRATION to a local calibration file (the hub's pileval is used otherwise)")
    from pplgate.gate.spec import parse_baseline
    from pplgate.variants import REGISTRY

    # the GPU gate's own AWQ entry (same params, so the gate's cache entry is reused)
    path = Path(__file__).resolve().parents[2] / "baselines" / "smollm2-135m-instruct.yaml"
    spec = parse_baseline(path, known_kinds=sorted(REGISTRY))
    variant = make_variant("awq", spec.profiles["gpu"].variants["awq-w4g64"].params)
    ctx = ModelContext(source=src, device="cuda", tokenizer=tok)
    variant.check(ctx)
    prepared = variant.prepare(ctx)  # the gate's cache entry when the gate ran first
    record_property("awq_origin", prepared.origin)
    _compare(prepared.model, tok, rows, text, record_property, "awq")
