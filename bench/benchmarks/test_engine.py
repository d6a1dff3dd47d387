"""Engine and loading benchmarks (pytest-benchmark): what one gate entry is made of, phase by phase.

``benchmark.extra_info`` carries tokens/s and the ppl, so a saved run says what was measured, not only
how long it took. SmolLM2 runs 4 windows on the CPU, all 148 on CUDA.
"""

from __future__ import annotations

import pytest


def _windows(device: str) -> int | None:
    return None if device.startswith("cuda") else 4


def test_tokenize_canonical(benchmark, measurer, smollm2, canonical):
    """The whole canonical text through SmolLM2's tokenizer (the tokenizer itself loaded once, before)."""
    from pplgate.protocol.tokens import tokenize_canonical

    tok = measurer.tokens(smollm2, None)[0]
    tokens = benchmark(tokenize_canonical, tok, canonical.text)
    benchmark.extra_info["n_tokens"] = tokens.n_tokens


@pytest.mark.parametrize("what", ["model", "tokenizer"])
def test_load_from_the_base_cache(benchmark, smollm2, device, what):
    """A warm load of the de-quantized GGUF model / its tokenizer (the cache entry is built before timing)."""
    from pplgate.models.base_cache import load_model_cached, load_tokenizer_cached
    from pplgate.models.quant_cache import QuantCache

    cache = QuantCache()
    dtype = "fp16" if device.startswith("cuda") else "fp32"
    if what == "model":
        load_model_cached(smollm2, dtype, device, cache)  # builds the entry when missing

        def run():
            return load_model_cached(smollm2, dtype, device, cache)[1]
    else:
        load_tokenizer_cached(smollm2, cache)

        def run():
            return load_tokenizer_cached(smollm2, cache)[1]

    info = benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=0)
    benchmark.extra_info.update({k: v for k, v in info.items() if isinstance(v, str)})


@pytest.mark.parametrize(("kind", "params"), [("fp", {}), ("rtn", {"w_bit": 4, "q_group_size": 64})])
def test_engine(benchmark, measurer, smollm2, canonical, device, kind, params):
    """evaluate_perplexity on SmolLM2 (fp32 on CPU, fp16 on CUDA; RTN w4 g64 as prepared by the gate)."""
    from pplgate.protocol.engine import evaluate_perplexity

    tokens = measurer.tokens(smollm2, None)[1]
    kind = kind if kind != "fp" else ("fp16" if device.startswith("cuda") else "fp32")
    model = measurer.prepare(smollm2, kind=kind, params=params, device=device).model
    batch = 8 if device.startswith("cuda") else 2

    def run():
        return evaluate_perplexity(
            model, tokens, canonical, max_windows=_windows(device), batch_size=batch, progress=False
        )

    result = benchmark.pedantic(run, rounds=3 if device.startswith("cuda") else 1, iterations=1, warmup_rounds=1)
    benchmark.extra_info.update(
        ppl=result.ppl, tokens_per_s=result.tokens_per_s, n_windows=result.n_windows, batch_size=batch
    )
    measurer.free(set())
