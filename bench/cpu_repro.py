"""Does a calibrated CPU quantization give the same model on another CPU type / thread count?

Quantizes the CPU tier's GPTQ (or llm-compressor AWQ) entry of the default model in memory (cache off)
under a *lever*, then prints one JSON line: the sha256 of the quantized decoder weights, the number of
tensors that differ from another run (``--against``), the PPL of the first windows and the time taken.

Levers: ``none`` (the library as it is), ``f64`` (GPTQ's Hessian accumulation and solve in float64),
``f64cal`` (``quant_dtype: fp64``: the calibration forward passes in float64 too).

    python bench/cpu_repro.py --kind gptq --lever f64 --threads 2 --digests /tmp/d.json
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import time

import torch


def cpu_name() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kind", default="gptq", choices=("gptq", "llmc-awq"))
    ap.add_argument("--lever", default="none", choices=("none", "f64", "f64cal"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-samples", type=int, default=16)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--windows", type=int, default=4)
    ap.add_argument("--digests", help="write the sha256 of each quantized decoder weight here (JSON)")
    ap.add_argument("--against", help="count the tensors whose digest differs from this --digests file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from pplgate.measure import Measurer
    from pplgate.models.registry import make_variant
    from pplgate.models.source import load_model, resolve_source
    from pplgate.models.variant import ModelContext
    from pplgate.protocol.engine import evaluate_perplexity

    cal = {"source": os.environ["PPLGATE_CALIBRATION"], "n_samples": args.n_samples, "seqlen": args.seqlen}
    if args.kind == "gptq":
        kind, params = "gptq", {"w_bit": 4, "q_group_size": 64, "sym": False, "dampening_frac": 1.0}
    else:
        group = {
            "targets": ["Linear"],
            "weights": {"num_bits": 4, "type": "int", "strategy": "group", "group_size": 64, "symmetric": False},
        }
        kind = "llmc-recipe"
        params = {
            "recipe": [
                {"AWQModifier": {"n_grid": 10}},
                {
                    "QuantizationModifier": {
                        "targets": ["Linear"],
                        "ignore": ["lm_head"],
                        "config_groups": {"group_0": group},
                    }
                },
            ]
        }
    params["calibration"] = cal
    if args.lever == "f64":  # GPTQ's math alone (the calibration forwards stay in float32)
        from llmcompressor.modifiers.gptq import gptq_quantize, helpers

        helpers.GPTQ_PRECISION = gptq_quantize.GPTQ_PRECISION = torch.float64
    if args.lever == "f64cal":  # the product's lever: both
        params["quant_dtype"] = "fp64"
    measurer = Measurer(cache_mode="off")
    src = resolve_source(None)
    tok, tokens, _ = measurer.tokens(src, None)

    def loader(dtype: str, fresh: bool = False) -> torch.nn.Module:
        return load_model(src, dtype=dtype, device="cpu")

    ctx = ModelContext(source=src, device="cpu", tokenizer=tok, cache_mode="off", loader=loader)
    variant = make_variant(kind, params)
    t0 = time.perf_counter()
    prepared = variant.prepare(ctx)
    quantize_s = time.perf_counter() - t0
    model = prepared.model
    weights = {k: v.detach().clone() for k, v in model.state_dict().items() if ".layers." in k and k.endswith("weight")}
    digests = {k: hashlib.sha256(weights[k].float().numpy().tobytes()).hexdigest() for k in sorted(weights)}
    h = hashlib.sha256("".join(digests.values()).encode())
    differ = None
    if args.against:
        with open(args.against) as f:
            other = json.load(f)
        differ = [k for k in digests if other.get(k) != digests[k]]
        differ = f"{len(differ)}/{len(digests)} tensors, first {differ[0] if differ else None}"
    if args.digests:
        with open(args.digests, "w") as f:
            json.dump(digests, f)
    res = evaluate_perplexity(model, tokens, measurer.text(), batch_size=2, max_windows=args.windows, progress=False)
    print(
        json.dumps(
            {
                "kind": args.kind,
                "lever": args.lever,
                "threads": args.threads,
                "cpu": cpu_name(),
                "torch": torch.__version__,
                "weights_sha256": h.hexdigest()[:16],
                "tensors_differing": differ,
                "n_weights": sum(v.numel() for v in weights.values()),
                "ppl": round(res.ppl, 6),
                "window_nlls": [round(x, 6) for x in res.window_nlls],
                "quantize_s": round(quantize_s, 1),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
