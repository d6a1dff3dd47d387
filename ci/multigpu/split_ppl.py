"""PPL of one model on one GPU vs the same model split across all visible GPUs (device_map)."""

from __future__ import annotations

import argparse
import json
import sys

import torch

from pplgate.models.source import load_model, load_tokenizer, resolve_source
from pplgate.protocol.dataset import load_canonical_text
from pplgate.protocol.engine import evaluate_perplexity
from pplgate.protocol.tokens import tokenize_canonical
from pplgate.provenance import device_layout


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default=None, help="default: the embedded SmolLM2-135M GGUF")
    ap.add_argument("--dtype", default="fp16")
    ap.add_argument("--device-map", default="balanced")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    src = resolve_source(args.model)
    text = load_canonical_text()
    tokens = tokenize_canonical(load_tokenizer(src), text.text)
    out = {
        "n_gpus": torch.cuda.device_count(),
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
    }
    for label, kw in (("single", {"device": "cuda:0"}), ("split", {"device_map": args.device_map})):
        model = load_model(src, args.dtype, **kw)
        r = evaluate_perplexity(model, tokens, text, batch_size=args.batch_size, progress=False)
        out[label] = {"ppl": r.ppl, "wall_time_s": r.wall_time_s, "layout": device_layout(model)}
        del model
        torch.cuda.empty_cache()
    out["abs_diff"] = abs(out["single"]["ppl"] - out["split"]["ppl"])
    print(json.dumps(out, indent=1))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
