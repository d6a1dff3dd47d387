"""GPU benchmark: pplgate's engine vs AutoAWQ's own evaluate_perplexity loop, same model, same process.

Cases: SmolLM2-135M fp16, SmolLM2-135M AWQ (w4 g64 GEMM, through pplgate's awq variant), and a
Llama-2-7B-shaped model built from its config with random fp16 weights (PPL meaningless, speed not).
For each: tokens/s, wall time and peak GPU memory of both loops, both PPLs and their relative
difference; for the 7B shape also model FLOP utilisation against the matmul rate measured here.

Usage (on a GPU runner without network, copy the inputs beside the checkout first: docs/OFFLINE.md):
  python bench/bench_gpu.py --dataset DIR --smollm2 FILE.gguf --llama-tokenizer DIR --out DIR
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from pplgate.measure import Measurer
from pplgate.models.source import resolve_source
from pplgate.protocol.dataset import load_wikitext2_test
from pplgate.protocol.engine import evaluate_perplexity
from pplgate.protocol.tokens import tokenize_canonical

# AutoAWQ's own loop is test support code (tests/support_autoawq_loop.py), not part of the package
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from support_autoawq_loop import installed_evaluate_perplexity  # noqa: E402

LLAMA2_7B = dict(
    vocab_size=32000,
    hidden_size=4096,
    intermediate_size=11008,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=32,
    max_position_embeddings=4096,
    rms_norm_eps=1e-5,
)


def matmul_tflops(dtype: torch.dtype, n: int = 8192, reps: int = 20) -> float:
    """Measured dense matmul rate (TFLOP/s) on random data, median of ``reps`` timed products."""
    a = torch.randn(n, n, device="cuda", dtype=dtype)
    b = torch.randn(n, n, device="cuda", dtype=dtype)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        a @ b
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e) / 1e3)
    del a, b
    return 2 * n**3 / statistics.median(times) / 1e12


def run_autoawq(model, tokenizer, rows) -> dict:
    run = installed_evaluate_perplexity(rows)
    torch.cuda.synchronize()
    gc.collect()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    ppl = run(model, tokenizer)
    torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    return {
        "ppl": ppl,
        "wall_s": wall,
        "peak_bytes": torch.cuda.max_memory_allocated(),
        "peak_over_weights_bytes": torch.cuda.max_memory_allocated() - base,
    }


def run_pplgate(model, tokenizer, text, batch_size: int, compile_model: bool = False) -> dict:
    """pplgate's tokenization + engine timed end to end on a model already in memory (the raw protocol
    functions on purpose: the benchmark times exactly what AutoAWQ's function does, on the same model
    object, including random-weight models built here; models come from the Measurer where they can)."""
    gc.collect()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    t0 = time.perf_counter()
    tokens = tokenize_canonical(tokenizer, text.text)  # end-to-end, like AutoAWQ's function
    t_tok = time.perf_counter() - t0
    res = evaluate_perplexity(model, tokens, text, batch_size=batch_size, progress=False, compile_model=compile_model)
    wall = time.perf_counter() - t0
    return {
        "ppl": res.ppl,
        "wall_s": wall,
        "score_s": res.wall_time_s,
        "tokenize_s": t_tok,
        "n_tokens": res.n_tokens,
        "n_windows": res.n_windows,
        "peak_bytes": res.peak_memory_bytes,
        "peak_over_weights_bytes": (res.peak_memory_bytes or 0) - base,
        "batch_size": batch_size,
    }


def tokenize_time(tokenizer, text) -> float:
    t0 = time.perf_counter()
    tokenizer(text.text, return_tensors="pt")
    return time.perf_counter() - t0


def bench_case(name, model, tokenizer, text, batch_sizes, reps, n_params=None, peak_tflops=None) -> dict:
    print(f"\n=== {name} ===", flush=True)
    sweep = {}
    for bs in batch_sizes:
        r = run_pplgate(model, tokenizer, text, bs)
        sweep[bs] = r
        print(
            f"  pplgate bs={bs}: ppl={r['ppl']:.6f} wall={r['wall_s']:.2f}s score={r['score_s']:.2f}s "
            f"peak={r['peak_bytes'] / 2**30:.2f}GiB",
            flush=True,
        )
    # fastest batch size whose peak memory is not above AutoAWQ's (checked below)
    ours_runs, ref_runs = [], []
    ref0 = run_autoawq(model, tokenizer, BENCH_ROWS)
    ref_runs.append(ref0)
    fits = [bs for bs in batch_sizes if sweep[bs]["peak_bytes"] <= ref0["peak_bytes"]] or [min(batch_sizes)]
    best_bs = min(fits, key=lambda b: sweep[b]["score_s"])
    for _ in range(reps):
        ours_runs.append(run_pplgate(model, tokenizer, text, best_bs))
        ref_runs.append(run_autoawq(model, tokenizer, BENCH_ROWS))
    tok_s = statistics.median(tokenize_time(tokenizer, text) for _ in range(3))
    ours = {k: statistics.median(r[k] for r in ours_runs) for k in ("wall_s", "score_s", "tokenize_s")}
    ref_wall = statistics.median(r["wall_s"] for r in ref_runs)
    ref_loop = ref_wall - tok_s
    n_tok_scored = ours_runs[0]["n_windows"] * 2048
    out = {
        "case": name,
        "batch_size": best_bs,
        "ppl_pplgate": ours_runs[0]["ppl"],
        "ppl_autoawq": ref_runs[0]["ppl"],
        "ppl_rel_diff": abs(ours_runs[0]["ppl"] - ref_runs[0]["ppl"]) / ref_runs[0]["ppl"],
        "n_tokens": ours_runs[0]["n_tokens"],
        "n_windows": ours_runs[0]["n_windows"],
        "pplgate_wall_s": ours["wall_s"],
        "pplgate_score_s": ours["score_s"],
        "autoawq_wall_s": ref_wall,
        "autoawq_loop_s_est": ref_loop,
        "tokenize_s": tok_s,
        "speedup_end_to_end": ref_wall / ours["wall_s"],
        "speedup_loop": ref_loop / ours["score_s"],
        "pplgate_tokens_per_s": n_tok_scored / ours["score_s"],
        "autoawq_tokens_per_s": n_tok_scored / ref_loop,
        "pplgate_peak_gib": max(r["peak_bytes"] for r in ours_runs) / 2**30,
        "autoawq_peak_gib": max(r["peak_bytes"] for r in ref_runs) / 2**30,
        "pplgate_peak_over_weights_gib": max(r["peak_over_weights_bytes"] for r in ours_runs) / 2**30,
        "autoawq_peak_over_weights_gib": max(r["peak_over_weights_bytes"] for r in ref_runs) / 2**30,
        "runs": {"pplgate": ours_runs, "autoawq": ref_runs, "batch_sweep": sweep},
    }
    if n_params and peak_tflops:
        achieved = 2 * n_params * n_tok_scored / ours["score_s"] / 1e12
        out["model_tflops_pplgate"] = achieved
        out["model_tflops_autoawq"] = 2 * n_params * n_tok_scored / ref_loop / 1e12
        out["mfu_pplgate"] = achieved / peak_tflops
        out["mfu_autoawq"] = out["model_tflops_autoawq"] / peak_tflops
    if COMPILE:
        first = run_pplgate(model, tokenizer, text, best_bs, compile_model=True)  # includes compilation
        again = run_pplgate(model, tokenizer, text, best_bs, compile_model=True)
        out["compiled"] = {
            "first_score_s": first["score_s"],
            "score_s": again["score_s"],
            "ppl": again["ppl"],
            "ppl_rel_diff_vs_eager": abs(again["ppl"] - out["ppl_pplgate"]) / out["ppl_pplgate"],
            "ppl_rel_diff_vs_autoawq": abs(again["ppl"] - out["ppl_autoawq"]) / out["ppl_autoawq"],
            "speedup_loop": ref_loop / again["score_s"],
            "peak_gib": again["peak_bytes"] / 2**30,
        }
        if n_params and peak_tflops:
            out["compiled"]["mfu"] = 2 * n_params * n_tok_scored / again["score_s"] / 1e12 / peak_tflops
    print(json.dumps({k: v for k, v in out.items() if k != "runs"}, indent=1), flush=True)
    return out


BENCH_ROWS: list[str] = []
COMPILE = False


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--smollm2", help="SmolLM2-135M-Instruct .gguf file")
    ap.add_argument("--llama-tokenizer", help="Llama-2 tokenizer dir (for the 7B-shaped model)")
    ap.add_argument("--calibration", help="calibration jsonl for the AWQ case")
    ap.add_argument("--cases", default="smollm2-fp16,smollm2-awq,llama2-7b-shape-fp16")
    ap.add_argument("--batch-sizes", default="1,4,8,16,32")
    ap.add_argument("--batch-sizes-7b", default="1,2,4,8")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--compile", action="store_true", help="also time the opt-in torch.compile path")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    assert torch.cuda.is_available(), "this benchmark needs a CUDA device"
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)

    global COMPILE
    COMPILE = args.compile
    BENCH_ROWS.extend(load_wikitext2_test(args.dataset)[0])
    measurer = Measurer(dataset=args.dataset)
    text = measurer.text()
    cases = args.cases.split(",")
    import transformers

    env = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    try:
        import awq

        env["autoawq"] = getattr(awq, "__version__", "?")
    except ImportError:
        env["autoawq"] = None
    env["matmul_tflops_fp16"] = matmul_tflops(torch.float16)
    env["matmul_tflops_bf16"] = matmul_tflops(torch.bfloat16)
    print(json.dumps(env, indent=1), flush=True)
    results = []
    bss = [int(x) for x in args.batch_sizes.split(",")]
    if any(c.startswith("smollm2") for c in cases):
        src = resolve_source(args.smollm2)
        tok = measurer.tokens(src, None)[0]
        if "smollm2-fp16" in cases:
            model = measurer.prepare(src, kind="fp16", params={}, device="cuda").model
            results.append(bench_case("smollm2-135m fp16", model, tok, text, bss, args.reps))
            del model
            measurer.free(set())
        if "smollm2-awq" in cases:
            try:
                from pplgate.gate.spec import parse_baseline
                from pplgate.models.registry import known_kinds

                if args.calibration:
                    os.environ["PPLGATE_CALIBRATION"] = args.calibration
                # the GPU gate's AWQ entry: same params, so the gate's cache entry is reused
                path = Path(__file__).resolve().parents[1] / "baselines" / "smollm2-135m-instruct.yaml"
                spec = parse_baseline(path, known_kinds=known_kinds())
                params = spec.profiles["gpu"].variants["awq-w4g64"].params
                prepared = measurer.prepare(src, kind="awq", params=params, device="cuda")
                r = bench_case("smollm2-135m awq-w4g64-gemm", prepared.model, tok, text, bss, args.reps)
                r["awq_prepare"] = {"origin": prepared.origin, "prepare_time_s": prepared.prepare_time_s}
                results.append(r)
                del prepared
                measurer.free(set())
            except Exception as exc:  # report, keep the other cases
                print(f"smollm2-awq case failed: {type(exc).__name__}: {exc}", flush=True)
                results.append({"case": "smollm2-135m awq-w4g64-gemm", "error": f"{type(exc).__name__}: {exc}"})
    if "llama2-7b-shape-fp16" in cases:
        from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

        # a model built here from a config (random weights): no source to measure, the raw engine runs on it
        tok = AutoTokenizer.from_pretrained(args.llama_tokenizer)
        torch.manual_seed(0)
        with torch.device("cuda"):
            model = AutoModelForCausalLM.from_config(LlamaConfig(**LLAMA2_7B), dtype=torch.float16).eval()
        n_params = sum(p.numel() for p in model.parameters())
        r = bench_case(
            "llama2-7b-shape fp16 (random weights)",
            model,
            tok,
            text,
            [int(x) for x in args.batch_sizes_7b.split(",")],
            args.reps,
            n_params=n_params,
            peak_tflops=env["matmul_tflops_fp16"],
        )
        r["n_params"] = n_params
        results.append(r)
        del model
    (out_dir / "bench.json").write_text(json.dumps({"env": env, "results": results}, indent=1) + "\n")
    print(
        "\n| case | bs | ppl pplgate | ppl AutoAWQ | rel diff | pplgate tok/s | AutoAWQ tok/s | loop speedup "
        "| end-to-end speedup | peak GiB pplgate / AutoAWQ | MFU |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        if "error" in r:
            print(f"| {r['case']} | error: {r['error']} |")
            continue
        mfu = f"{r['mfu_pplgate']:.1%} (AutoAWQ {r['mfu_autoawq']:.1%})" if "mfu_pplgate" in r else "-"
        if "compiled" in r:
            c = r["compiled"]
            mfu += f"; compiled: {c['speedup_loop']:.2f}x, ppl rel diff {c['ppl_rel_diff_vs_autoawq']:.1e}" + (
                f", MFU {c['mfu']:.1%}" if "mfu" in c else ""
            )
        print(
            f"| {r['case']} | {r['batch_size']} | {r['ppl_pplgate']:.4f} | {r['ppl_autoawq']:.4f} | "
            f"{r['ppl_rel_diff']:.2e} | {r['pplgate_tokens_per_s']:,.0f} | {r['autoawq_tokens_per_s']:,.0f} | "
            f"{r['speedup_loop']:.2f}x | {r['speedup_end_to_end']:.2f}x | "
            f"{r['pplgate_peak_gib']:.2f} / {r['autoawq_peak_gib']:.2f} | {mfu} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
