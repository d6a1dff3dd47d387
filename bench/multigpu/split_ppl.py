"""PPL of one model on one GPU vs the same model split across all visible GPUs (device_map)."""

from __future__ import annotations

import argparse
import json
import sys

import torch

from pplgate.measure import Measurer
from pplgate.models.source import resolve_dtype, resolve_source


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default=None, help="default: the embedded SmolLM2-135M GGUF")
    ap.add_argument("--dtype", default="fp16")
    ap.add_argument("--device-map", default="balanced")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    src = resolve_source(args.model)
    measurer = Measurer()
    out = {
        "n_gpus": torch.cuda.device_count(),
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
    }
    for label, placement in (("single", None), ("split", args.device_map)):
        m = measurer.measure(
            src,
            kind=resolve_dtype(args.dtype, "cuda:0"),
            params={},
            device="cuda:0",
            device_map=placement,
            batch_size=args.batch_size,
        )
        r = m.result
        out[label] = {"ppl": r.ppl, "wall_time_s": r.wall_time_s, "layout": m.extra["device_layout"]}
        measurer.free(set())  # one copy of the model on the GPUs at a time
    out["abs_diff"] = abs(out["single"]["ppl"] - out["split"]["ppl"])
    print(json.dumps(out, indent=1))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
