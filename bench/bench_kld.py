"""Benchmark of issue 12's comparison pass: what KL divergence against the reference costs on top of a
variant's own PPL measurement, and its peak memory against the models' weights.

For one model source, a reference variant (default: the float kind of the device, fp16 on CUDA) and one or
more variants, all prepared once through :class:`pplgate.Measurer` and kept resident, each repetition times:

* ``ppl_reference``: the reference's own PPL measurement (``evaluate_perplexity``);
* ``ppl[V]``: each variant's own PPL measurement;
* ``compare[V]``: the comparison pass of the reference and ``V`` (both models' forwards, KLD/top-1/Δp, and
  both PPLs from that one pass);
* ``compare_all``: with several variants, one pass of the reference and all of them.

Ratios (medians over repetitions): ``raw = compare[V] / ppl[V]`` and ``incremental = (compare[V] -
ppl_reference) / ppl[V]``: in a session that measures the reference anyway, the comparison pass replaces
that measurement (it returns the reference's PPL too), so the extra cost of the KLD of ``V`` is the
incremental ratio; issue 12's target is <= 1.3. Peak memory: the engine's ``max_memory_allocated`` (all
resident models included) and the peak above what was allocated before the pass, beside each model's
weight bytes (parameters and buffers). The PPLs of both paths are checked against each other.

Usage (GPU; the same options as ``pplgate compare`` where they exist):
  python bench/bench_kld.py --model smollm2-135m-instruct --variant rtn:w_bit=4,q_group_size=64 \\
      --variant 'awq:{"w_bit":4,"q_group_size":64,"zero_point":true,"version":"gemm",
                 "calibration":{"source":"$PPLGATE_CALIBRATION","n_samples":128,"seqlen":512}}' \\
      --device cuda --batch-size 16 --reps 3 --out results/kld-bench.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from pplgate.cli import parse_variant_spec
from pplgate.measure import Measurer
from pplgate.models.source import resolve_dtype, resolve_source
from pplgate.protocol.compare import evaluate_comparisons
from pplgate.protocol.engine import evaluate_perplexity


def weight_bytes(model) -> int:
    """Bytes of the model's parameters and buffers (packed AWQ weights are buffers)."""
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


def allocated() -> int:
    if not torch.cuda.is_available():
        return 0
    torch.cuda.synchronize()
    return sum(torch.cuda.memory_allocated(i) for i in range(torch.cuda.device_count()))


def timed(fn) -> tuple[Any, dict[str, Any]]:
    """``fn()`` with its engine wall time, the peak it reports and the peak above what was allocated before."""
    before = allocated()
    t0 = time.perf_counter()
    out = fn()
    total = time.perf_counter() - t0
    first = out[0] if isinstance(out, list) else out
    peak = first.peak_memory_bytes
    return out, {
        "wall_s": first.wall_time_s,
        "call_s": total,
        "peak_bytes": peak,
        "peak_over_resident_bytes": None if peak is None else peak - before,
    }


def git_commit() -> str | None:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, cwd=Path(__file__).parent
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--gguf-file")
    ap.add_argument("--variant", action="append", required=True, help="KIND or KIND:KEY=VALUE,... (repeatable)")
    ap.add_argument("--reference-variant", help="default: the float kind of --dtype on --device")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dataset")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-windows", type=int)
    ap.add_argument("--chunk-tokens", type=int, help="rows per comparison chunk (default: the engine's)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", required=True, help="JSON file to write")
    args = ap.parse_args()

    dtype = resolve_dtype(args.dtype, args.device)
    ref_kind, ref_params = parse_variant_spec(args.reference_variant) if args.reference_variant else (dtype, {})
    specs = [parse_variant_spec(v) for v in args.variant]
    names = [v.split(":", 1)[0] + (f"#{i}" if i else "") for i, v in enumerate(args.variant)]
    measurer = Measurer(dataset=args.dataset)
    text = measurer.text()
    src = resolve_source(args.model, args.gguf_file)
    _, tokens, _ = measurer.tokens(src, None)
    t0 = time.perf_counter()
    ref = measurer.prepare(src, kind=ref_kind, params=ref_params, device=args.device).model
    models = [measurer.prepare(src, kind=k, params=p, device=args.device).model for k, p in specs]
    prepare_s = time.perf_counter() - t0
    common = dict(seqlen=2048, batch_size=args.batch_size, progress=False)
    n = args.max_windows

    def ppl(model, windows=n):
        return evaluate_perplexity(model, tokens, text, max_windows=windows, **common)

    def compare(ms, labels, windows=n):
        return evaluate_comparisons(
            ref, ms, tokens, text, max_windows=windows, chunk_tokens=args.chunk_tokens, labels=labels, **common
        )

    print(f"prepared reference {ref_kind} and {len(models)} variant(s) in {prepare_s:.1f}s; warming up", flush=True)
    warm = min(2, args.batch_size)
    for m in (ref, *models):
        ppl(m, warm)
    compare(models[:1], names[:1], warm)
    if len(models) > 1:
        compare(models, names, warm)

    reps: list[dict[str, Any]] = []
    results: dict[str, Any] = {}
    for r in range(args.reps):
        rep: dict[str, Any] = {}
        res, rep["ppl_reference"] = timed(lambda: ppl(ref))
        results["ppl_reference"] = res.ppl
        for name, m in zip(names, models, strict=True):
            res, rep[f"ppl[{name}]"] = timed(lambda m=m: ppl(m))
            results[f"ppl[{name}]"] = res.ppl
            out, rep[f"compare[{name}]"] = timed(lambda m=m, name=name: compare([m], [name]))
            results[f"compare[{name}]"] = out[0].summary_stats()
        if len(models) > 1:
            out, rep["compare_all"] = timed(lambda: compare(models, names))
            results["compare_all"] = {nm: o.summary_stats() for nm, o in zip(names, out, strict=True)}
        reps.append(rep)
        print(f"rep {r}: " + ", ".join(f"{k} {v['wall_s']:.2f}s" for k, v in rep.items()), flush=True)

    def med(key: str) -> float:
        return statistics.median(rep[key]["wall_s"] for rep in reps)

    ratios = {}
    for name in names:
        c, v, base = med(f"compare[{name}]"), med(f"ppl[{name}]"), med("ppl_reference")
        stats = results[f"compare[{name}]"]
        ratios[name] = {
            "compare_s": c,
            "ppl_variant_s": v,
            "ppl_reference_s": base,
            "raw_ratio": c / v,
            "incremental_ratio": (c - base) / v,
            "target_incremental_le_1_3": (c - base) / v <= 1.3,
            "ppl_reference_rel_diff": abs(stats["ppl_reference"] / results["ppl_reference"] - 1),
            "ppl_model_rel_diff": abs(stats["ppl_model"] / results[f"ppl[{name}]"] - 1),
        }
    if len(models) > 1:
        ratios["compare_all"] = {
            "compare_s": med("compare_all"),
            "sum_ppl_s": med("ppl_reference") + sum(med(f"ppl[{nm}]") for nm in names),
        }
    report = {
        "config": vars(args) | {"reference": {"kind": ref_kind, **ref_params}, "names": names},
        "env": {
            "torch": torch.__version__,
            "python": platform.python_version(),
            "device_name": torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor(),
            "git_commit": git_commit(),
        },
        "n_windows": min(n, tokens.n_tokens // 2048) if n else tokens.n_tokens // 2048,
        "prepare_s": prepare_s,
        "weight_bytes": {"reference": weight_bytes(ref)}
        | {nm: weight_bytes(m) for nm, m in zip(names, models, strict=True)},
        "ratios": ratios,
        "repetitions": reps,
        "results": results,
    }
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(ratios, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
