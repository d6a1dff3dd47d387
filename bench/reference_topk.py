"""Exactness and cost of comparing against a stored top-K reference (issue 28), for K in {8, ..., 256}.

For one reference and one compared model on the same windows it runs the exact in-memory comparison
(:func:`pplgate.protocol.compare.evaluate_comparison`) and the compared model's own PPL pass, then for every K
(and log-prob dtype) writes a stored reference (:func:`save_reference`, timed) and compares the model against it
(:func:`compare_to_reference`, timed, after the reference model is dropped). Per K it reports the relative error
of mean KLD, of each KLD percentile and of max KLD vs the exact pass, whether top-1 agreement, mean Δp, both
PPLs and the per-window Δp/top-1/NLL vectors are exactly the in-memory pass's, the file size per window, and the
times (write, open + hash check, compare). Writes ``reference_topk.json`` and ``reference_topk.md`` into the
output directory (``--out-dir``, else ``$PPLGATE_BENCH_OUT``).

Two kinds of pair:

* a real model through :class:`pplgate.Measurer` (CPU tier: SmolLM2-135M, fp32 reference vs rtn w4g64):
    OMP_NUM_THREADS=1 python bench/reference_topk.py --model smollm2-135m-instruct --device cpu --threads 1 \\
        --max-windows 2 --out-dir results/cpu-reference-topk
* ``--random-llama7b``: a randomly initialised Llama of the 7B shape (hidden 4096, 32 heads, MLP 11008, vocab
  32000; ``--layers``, default 32) in fp16 on CUDA, its lm_head scaled so that the logits have sd
  ``--logit-std`` (default 5: entropy ~2.8 nats, like a trained model's, instead of the near-uniform ~9.5 of the
  raw init), against an rtn w4g64 copy (pplgate's RTN of the decoder's Linears), on seeded random token ids
  (no tokenizer, no dataset needed):
    python bench/reference_topk.py --random-llama7b --device cuda --max-windows 16 --batch-size 4 \\
        --out-dir "$OUT"
"""

from __future__ import annotations

import argparse
import copy
import gc
import hashlib
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from pplgate.protocol.compare import evaluate_comparison
from pplgate.protocol.dataset import CanonicalText
from pplgate.protocol.engine import evaluate_perplexity
from pplgate.protocol.kld_stats import PERCENTS, percent_key
from pplgate.protocol.reference_file import StoredReference
from pplgate.protocol.stored_compare import compare_to_reference, save_reference
from pplgate.protocol.tokens import TokenizedText
from pplgate.provenance import cpu_model

KS = (8, 16, 32, 64, 128, 256)


def versions() -> dict[str, str]:
    import safetensors
    import transformers

    import pplgate

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "safetensors": safetensors.__version__,
        "pplgate": getattr(pplgate, "__version__", "?"),
    }


def real_pair(args: argparse.Namespace) -> tuple[Any, Any, TokenizedText, CanonicalText, dict]:
    """The reference and the variant of a real model, through the Measurer (its caches and checks)."""
    from pplgate.cli import parse_variant_spec
    from pplgate.measure import Measurer
    from pplgate.models.source import resolve_dtype, resolve_source

    dtype = resolve_dtype("auto", args.device)
    measurer = Measurer(progress=False)
    src = resolve_source(args.model)
    _, tokens, _ = measurer.tokens(src, None)
    ref_kind = args.reference_variant or dtype
    kind, params = parse_variant_spec(args.variant)
    ref = measurer.prepare(src, kind=ref_kind, params={}, device=args.device).model
    model = measurer.prepare(src, kind=kind, params=params, device=args.device).model
    # the name as given, not src.describe() (a local path of this machine has no place in a record)
    desc = {"model": args.model, "reference_variant": ref_kind, "variant": args.variant}
    return ref, model, tokens, measurer.text(), desc


def random_pair(args: argparse.Namespace) -> tuple[Any, Any, TokenizedText, CanonicalText, dict]:
    """A random 7B-shape Llama (fp16 on CUDA, fp32 elsewhere) and its rtn w4g64 copy, on seeded random ids."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from pplgate.models.rtn import rtn_quantize_model

    cfg = LlamaConfig(
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=args.layers,
        num_attention_heads=32,
        num_key_value_heads=32,
        vocab_size=32000,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
    )
    dtype = torch.float16 if args.device.startswith("cuda") else torch.float32
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # built in its dtype on the device: no fp32 copy of 7B weights
    try:
        with torch.device(args.device):
            ref = LlamaForCausalLM(cfg).eval()
    finally:
        torch.set_default_dtype(default)
    with torch.no_grad():
        head = ref.get_output_embeddings().weight
        head.mul_(args.logit_std / (head.float().std() * cfg.hidden_size**0.5))
    model = copy.deepcopy(ref)
    t0 = time.perf_counter()
    with torch.no_grad():
        rtn_quantize_model(model, args.w_bit, 64, True)
    quant_s = time.perf_counter() - t0
    n = args.max_windows * args.seqlen + 1
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, cfg.vocab_size, (n,), generator=g, dtype=torch.long)
    text = f"random-token-ids seed=0 n={n} vocab={cfg.vocab_size}"
    dataset = CanonicalText(
        text=text, sha256=hashlib.sha256(text.encode()).hexdigest(), source="synthetic", n_rows=1, canonical=False
    )
    tokens = TokenizedText(ids=ids, bos_added=False, tokenizer_name="synthetic-random-ids", tokenizer_sha256="none")
    n_params = sum(p.numel() for p in ref.parameters())
    desc = {
        "model": f"random Llama 7B shape, {args.layers} layers, {n_params / 1e9:.2f}B params, {dtype}, "
        f"lm_head scaled to logit sd {args.logit_std}",
        "reference_variant": str(dtype).removeprefix("torch."),
        "variant": f"rtn w_bit={args.w_bit} q_group_size=64 zero_point (decoder Linears)",
        "quantize_s": quant_s,
    }
    return ref, model, tokens, dataset, desc


def rel(a: float, b: float) -> float | None:
    return None if b == 0 else (a - b) / b


def run(args: argparse.Namespace, out_dir: Path) -> dict[str, Any]:
    if args.threads:
        torch.set_num_threads(args.threads)
    ref, model, tokens, dataset, desc = (random_pair if args.random_llama7b else real_pair)(args)
    kw = dict(seqlen=args.seqlen, batch_size=args.batch_size, max_windows=args.max_windows, progress=False)
    evaluate_perplexity(model, tokens, dataset, **{**kw, "max_windows": 1})  # warm-up (kernels, allocator)
    exact = evaluate_comparison(ref, model, tokens, dataset, **kw)
    print(
        f"exact: mean_kld={exact.mean_kld:.6g} top1={exact.top1_agreement:.6f} compare {exact.wall_time_s:.2f}s",
        flush=True,
    )
    work = Path(tempfile.mkdtemp(prefix="reference-topk-", dir=args.work_dir))
    saved = []
    plan = [
        (k, lp_dtype, s)
        for lp_dtype in args.logprob_dtypes.split(",")
        for k in (args.float16_ks if lp_dtype == "float16" and args.float16_ks else args.ks)
        for s in args.tail_samples
    ]
    for k, lp_dtype, s in plan:
        path = work / f"ref-k{k}-{lp_dtype}-s{s}.safetensors"
        info = save_reference(ref, tokens, dataset, path, top_k=k, logprob_dtype=lp_dtype, tail_samples=s, **kw)
        saved.append((k, lp_dtype, s, path, info))
        print(
            f"saved K={k} {lp_dtype} S={s}: {info['bytes_per_window'] / 2**20:.2f} MiB/window "
            f"{info['wall_time_s']:.2f}s",
            flush=True,
        )
    del ref
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    ppl = evaluate_perplexity(model, tokens, dataset, **kw)  # the model alone: its own PPL pass
    print(f"the model's own PPL pass {ppl.wall_time_s:.2f}s", flush=True)
    weights = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
    rows = []
    for k, lp_dtype, s, path, info in saved:
        t0 = time.perf_counter()
        stored = StoredReference(path)
        open_s = time.perf_counter() - t0
        r = compare_to_reference(stored, model, tokens, dataset, batch_size=args.batch_size, progress=False)
        pct_err = {p: rel(r.kld_percentiles[p], exact.kld_percentiles[p]) for p in map(percent_key, PERCENTS)}
        row = {
            "top_k": k,
            "logprob_dtype": lp_dtype,
            "tail_samples": s,
            "mean_kld": r.mean_kld,
            "mean_kld_rel_error": rel(r.mean_kld, exact.mean_kld),
            "max_kld_rel_error": rel(r.max_kld, exact.max_kld),
            "percentile_rel_error": pct_err,
            "max_abs_percentile_rel_error": max(abs(v) for v in pct_err.values() if v is not None),
            "window_kld_max_rel_error": max(
                abs(a - b) / b for a, b in zip(r.window_klds, exact.window_klds, strict=True)
            ),
            "top1_exact": r.top1_agreement == exact.top1_agreement and r.window_top1 == exact.window_top1,
            "delta_p_exact": r.mean_delta_p == exact.mean_delta_p and r.window_delta_p == exact.window_delta_p,
            "delta_p_max_abs_diff": max(
                abs(a - b) for a, b in zip(r.window_delta_p, exact.window_delta_p, strict=True)
            ),
            "rms_delta_p_exact": r.rms_delta_p == exact.rms_delta_p,
            "ppl_reference_exact": r.ppl_reference == exact.ppl_reference,
            "ppl_model_exact": r.ppl_model == exact.ppl_model,
            "bytes_per_window": info["bytes_per_window"],
            "write_s": info["wall_time_s"],
            "open_verify_s": open_s,
            "compare_s": r.wall_time_s,
            "compare_peak_memory_bytes": r.peak_memory_bytes,
        }
        rows.append(row)
        print(json.dumps({k2: v for k2, v in row.items() if k2 != "percentile_rel_error"}), flush=True)
        if not args.keep_files:
            path.unlink()
    if not args.keep_files:
        work.rmdir()
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else cpu_model()
    return {
        "pair": desc,
        "device": args.device,
        "device_name": device_name,
        "threads": torch.get_num_threads(),
        "versions": versions(),
        "seqlen": args.seqlen,
        "n_windows": exact.n_windows,
        "batch_size": args.batch_size,
        "exact": {
            "mean_kld": exact.mean_kld,
            "max_kld": exact.max_kld,
            "kld_percentiles": exact.kld_percentiles,
            "top1_agreement": exact.top1_agreement,
            "mean_delta_p": exact.mean_delta_p,
            "ppl_reference": exact.ppl_reference,
            "ppl_model": exact.ppl_model,
            "compare_s": exact.wall_time_s,
            "compare_peak_memory_bytes": exact.peak_memory_bytes,
        },
        "model_ppl_pass_s": ppl.wall_time_s,
        "model_ppl_peak_memory_bytes": ppl.peak_memory_bytes,
        "model_weight_bytes": weights,
        "rows": rows,
    }


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:+.3f}%"


def markdown(res: dict[str, Any]) -> str:
    ex = res["exact"]
    lines = [
        f"# Stored top-K reference vs the exact in-memory comparison ({res['device_name']})",
        "",
        f"Pair: {res['pair']['model']}; reference {res['pair']['reference_variant']} vs {res['pair']['variant']}. "
        f"{res['n_windows']} windows of {res['seqlen']}, batch {res['batch_size']}, device {res['device']}, "
        f"{res['threads']} thread(s). Versions: " + ", ".join(f"{k} {v}" for k, v in res["versions"].items()),
        "",
        f"Exact: mean KLD {ex['mean_kld']:.6g}, max {ex['max_kld']:.4g}, top-1 {ex['top1_agreement']:.6f}, "
        f"mean Δp {ex['mean_delta_p']:+.6g}, PPL ref {ex['ppl_reference']:.4f} / model {ex['ppl_model']:.4f}; "
        f"in-memory compare {ex['compare_s']:.2f} s, the model's own PPL pass {res['model_ppl_pass_s']:.2f} s.",
        "",
        "| K | logprobs | tail samples | mean KLD err | worst abs pct err | p99.9 err | p50 err | p1 err | max err | "
        "top-1 exact | Δp exact | PPLs exact | MiB/window | write s | open+hash s | compare s | "
        "compare / in-memory | compare / own PPL |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        pe = r["percentile_rel_error"]
        lines.append(
            f"| {r['top_k']} | {r['logprob_dtype']} | {r.get('tail_samples', 0)} | {_pct(r['mean_kld_rel_error'])} | "
            f"{100 * r['max_abs_percentile_rel_error']:.3f}% | {_pct(pe['99.9'])} | {_pct(pe['50'])} | "
            f"{_pct(pe['1'])} | "
            f"{_pct(r['max_kld_rel_error'])} | {r['top1_exact']} | {r['delta_p_exact']} | "
            f"{r['ppl_reference_exact'] and r['ppl_model_exact']} | {r['bytes_per_window'] / 2**20:.3f} | "
            f"{r['write_s']:.2f} | {r['open_verify_s']:.2f} | {r['compare_s']:.2f} | "
            f"{r['compare_s'] / ex['compare_s']:.2f} | {r['compare_s'] / res['model_ppl_pass_s']:.2f} |"
        )
    if res["rows"] and res["rows"][0]["compare_peak_memory_bytes"]:
        gib = 2**30
        lines += [
            "",
            f"Peak GPU memory: in-memory compare (both models) {ex['compare_peak_memory_bytes'] / gib:.2f} GiB; "
            f"the model's own PPL pass (alone) {res['model_ppl_peak_memory_bytes'] / gib:.2f} GiB; "
            "compare against the file "
            f"(reference never loaded) {max(r['compare_peak_memory_bytes'] for r in res['rows']) / gib:.2f} GiB; "
            f"the model's weights {res['model_weight_bytes'] / gib:.2f} GiB.",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--variant", default="rtn:w_bit=4,q_group_size=64", help="the compared model's variant SPEC")
    ap.add_argument("--reference-variant", help="the reference's kind (default: the device's float kind)")
    ap.add_argument("--random-llama7b", action="store_true", help="a random 7B-shape Llama and its rtn copy")
    ap.add_argument("--layers", type=int, default=32, help="with --random-llama7b: decoder layers (7B: 32)")
    ap.add_argument("--logit-std", type=float, default=5.0, help="with --random-llama7b: sd of the logits")
    ap.add_argument("--w-bit", type=int, default=4, help="with --random-llama7b: the rtn copy's bits")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, help="torch threads (CPU)")
    ap.add_argument("--seqlen", type=int, default=2048)
    ap.add_argument("--max-windows", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--ks", type=lambda s: [int(x) for x in s.split(",")], default=list(KS))
    ap.add_argument("--float16-ks", type=lambda s: [int(x) for x in s.split(",")], help="K for float16 (default --ks)")
    ap.add_argument(
        "--tail-samples",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[0],
        help="comma-separated S: sampled tail ids per position (0: one tail bucket; default 0)",
    )
    ap.add_argument("--logprob-dtypes", default="float32,float16", help="comma-separated: float32, float16")
    ap.add_argument("--out-dir", default=os.environ.get("PPLGATE_BENCH_OUT"), help="default: $PPLGATE_BENCH_OUT")
    ap.add_argument("--work-dir", help="where the reference files are written (default: the system temp dir)")
    ap.add_argument("--keep-files", action="store_true", help="keep the reference files")
    args = ap.parse_args(argv)
    if not args.out_dir:
        ap.error("give --out-dir DIR or set PPLGATE_BENCH_OUT")
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    res = run(args, out_dir)
    res["bench_wall_s"] = time.perf_counter() - t0
    given = list(sys.argv[1:] if argv is None else argv)
    shown = ["<out-dir>" if i and given[i - 1] == "--out-dir" else a for i, a in enumerate(given)]
    res["command"] = "python bench/reference_topk.py " + " ".join(shown)  # no machine paths in the record
    (out_dir / "reference_topk.json").write_text(json.dumps(res, indent=2) + "\n")
    (out_dir / "reference_topk.md").write_text(markdown(res))
    print(markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
