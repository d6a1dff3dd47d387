"""Measure fp32 / rtn / awq perplexity of a model on the first windows (CPU-friendly), print a table.

Usage (from the repo root; ../shared holds the data):
    PYTHONPATH=src python bench/measure_variants.py --max-windows 4 --batch-size 2

AWQ calibration default: 32 texts x seqlen 512 from the shared offline corpus. AutoAWQ keeps texts of
<= seqlen tokens, concatenates them and cuts seqlen-token blocks; 32 python-docs paragraphs give a
handful of 512-token blocks. That is small next to AutoAWQ's default (128 pileval samples) but the
AWQ scale/clip search is dominated by per-layer grid searches whose cost grows with the token count,
and on a 2-core CPU 32x512 already takes ~15 minutes for a 30-layer model. Run it once; the cache
keeps the result.
"""

from __future__ import annotations

import argparse
import json
import os
import warnings
from pathlib import Path

warnings.filterwarnings("ignore", category=DeprecationWarning)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None, help="model source (default: the embedded SmolLM2-135M GGUF)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--max-windows", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("--n-samples", type=int, default=32)
    ap.add_argument("--calib-seqlen", type=int, default=512)
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--no-clip", action="store_true", help="AWQ without its clipping search (apply_clip=False)")
    ap.add_argument("--variants", default="fp32,rtn,awq")
    ap.add_argument("--json", default=None, help="also write the rows as JSON here")
    args = ap.parse_args()

    import torch

    from pplgate.measure import Measurer
    from pplgate.models.hashing import library_versions
    from pplgate.models.source import resolve_source

    torch.manual_seed(0)
    shared = Path(os.environ.get("PPLGATE_SHARED", Path(__file__).resolve().parents[1] / ".." / "shared"))
    dataset = str(shared / "data" / "wikitext-2-raw-v1" / "test.jsonl")
    calib = str(shared / "data" / "calibration" / "python-3.11-docs-prose.jsonl")
    src = resolve_source(args.model)
    measurer = Measurer(dataset=dataset, cache_dir=args.cache_dir)
    _, tokens, _ = measurer.tokens(src, None)
    specs = {
        "fp32": ("fp32", {}),
        "rtn": ("rtn", {"w_bit": 4, "q_group_size": args.group_size, "zero_point": True}),
        "awq": (
            "awq",
            {
                "w_bit": 4,
                "q_group_size": args.group_size,
                "zero_point": True,
                "version": "gemm",
                "calibration": {"path": calib, "n_samples": args.n_samples, "seqlen": args.calib_seqlen},
                **({"apply_clip": False} if args.no_clip else {}),
            },
        ),
    }
    rows = []
    for name in args.variants.split(","):
        kind, params = specs[name]
        runs = 2 if kind == "awq" else 1  # second awq prepare: the cache hit
        for run in range(runs):
            # a Measurer measures one request once: the cache-hit run needs its own (same text, same cache)
            m = measurer if run == 0 else Measurer(dataset=dataset, cache_dir=args.cache_dir)
            request = dict(kind=kind, params=params, device=args.device)
            prep = m.prepare(src, **request)  # kept for its full info; measure() scores this very model
            res = m.measure(src, **request, batch_size=args.batch_size, max_windows=args.max_windows).result
            row = {
                "variant": name,
                "origin": prep.origin,
                "ppl": res.ppl,
                "prepare_s": prep.prepare_time_s,
                "eval_s": res.wall_time_s,
                "window_nlls": res.window_nlls,
                "info": {k: v for k, v in prep.info.items() if k != "key_parts"},
            }
            rows.append(row)
            print(json.dumps(row, default=str), flush=True)
            del prep
            m.free(set())
    print()
    print(f"versions: {library_versions('torch', 'transformers', 'autoawq', 'accelerate')}")
    print(
        f"model {src.describe()}, {tokens.n_tokens} tokens, first {args.max_windows} windows, batch {args.batch_size}"
    )
    print(f"{'variant':8} {'origin':10} {'ppl':>10} {'prepare_s':>10} {'quant_s':>9} {'eval_s':>8}")
    for r in rows:
        q = r["info"].get("quantize_time_s", r["info"].get("quantize_time_s_when_built"))
        qs = f"{q:9.1f}" if isinstance(q, float) else f"{'-':>9}"
        print(f"{r['variant']:8} {r['origin']:10} {r['ppl']:10.4f} {r['prepare_s']:10.1f} {qs} {r['eval_s']:8.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1, default=str))


if __name__ == "__main__":
    main()
