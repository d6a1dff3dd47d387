"""A random-weight Llama bigger than one GPU, built on the GPUs directly and scored with pplgate's engine.

    python bench/multigpu/big_model.py --tokenizer TOK --shape 70b --gpus 2 [--windows K] [--pipeline] --json OUT.json
    python bench/multigpu/big_model.py --tokenizer TOK --shape 7b --gpus 4 --pipeline --check-single --json OUT.json
    python bench/multigpu/big_model.py --tokenizer TOK --shape tiny --device cpu --stages 3 --pipeline --check-single

1. The model is created on the ``meta`` device (no memory), then a device map assigns the embedding
   to the first GPU, the decoder layers in equal contiguous groups (``--split balanced``; ``auto``:
   accelerate's ``infer_auto_device_map`` with balanced ``max_memory`` and ``--headroom``), the final
   norm and ``lm_head`` to the last GPU.
2. Every parameter is then made on its own GPU: RMSNorm weights 1, every other weight N(0, 0.02)
   (transformers' Llama init) from a generator seeded by (``--seed``, the parameter's name) alone, so
   the weights do not depend on the split. The rotary ``inv_freq`` buffer is recomputed by the
   model's own rotary class. Nothing is ever materialised on the CPU.
3. accelerate's ``dispatch_model`` adds the hooks that move activations between GPUs, and pplgate's
   ``evaluate_perplexity`` scores the first K windows (``--windows``; default all: 166 with Llama-2).
4. ``--pipeline`` scores the same batches again with stages overlapped (layer_pipeline.py) and checks that
   every window NLL is identical; ``--check-single`` also builds the same seeded model on one device
   (a shape that fits one GPU) and compares its NLLs with the split's.

The JSON has: shape, parameter count and bytes, the device map per device, build time, per-GPU weight
and peak memory, and per run the PPL, window count, wall time and tok/s.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from layer_pipeline import even_stages, pipelined_window_nlls  # noqa: E402

SHAPES = {  # hidden, intermediate, layers, heads, kv heads
    "tiny": (64, 128, 4, 4, 2),
    "1b": (2048, 5504, 16, 16, 16),
    "7b": (4096, 11008, 32, 32, 32),
    "70b": (8192, 28672, 80, 64, 8),  # Llama-2-70B: 68.98e9 parameters with a 32000 vocabulary, ~138 GB in fp16
}
GiB = 1 << 30


def make_config(shape: str, vocab: int):
    from transformers import LlamaConfig

    hidden, inter, layers, heads, kv = SHAPES[shape]
    return LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
    )


def empty_model(cfg) -> torch.nn.Module:
    """The model with every parameter and buffer on the meta device (no memory anywhere)."""
    from transformers import LlamaForCausalLM

    with torch.device("meta"):
        model = LlamaForCausalLM(cfg)
    return model.eval()


def balanced_map(cfg, devices: list[str]) -> dict[str, str]:
    """Embedding (and rotary) on the first device, layers in equal contiguous groups, norm + head on the last."""
    groups = even_stages(cfg.num_hidden_layers, len(devices))
    dmap = {"model.embed_tokens": devices[0], "model.rotary_emb": devices[0]}
    for dev, group in zip(devices, groups, strict=False):
        dmap.update({f"model.layers.{i}": dev for i in group})
    dmap.update({"model.norm": devices[-1], "lm_head": devices[-1]})
    return dmap


def gpu_budget(devices: list[str], headroom: float) -> dict[int, int]:
    """Bytes each GPU may hold: its total memory less ``headroom`` (activations, CUDA context, allocator)."""
    ids = [int(d.split(":")[1]) for d in devices]
    return {i: int(torch.cuda.get_device_properties(i).total_memory * (1 - headroom)) for i in ids}


def auto_map(model: torch.nn.Module, max_memory: dict[int, int]) -> dict[str, str]:
    """accelerate's balanced ``infer_auto_device_map`` over the GPUs of ``max_memory`` (index -> bytes)."""
    from accelerate.utils import get_balanced_memory, infer_auto_device_map

    kw = dict(no_split_module_classes=["LlamaDecoderLayer"], dtype=torch.float16)
    balanced = get_balanced_memory(model, max_memory=max_memory, **kw)
    dmap = infer_auto_device_map(model, max_memory=balanced, **kw)
    bad = sorted({str(v) for v in dmap.values() if not isinstance(v, int)})
    if bad:
        raise SystemExit(f"the model does not fit {max_memory} (bytes per GPU): the device map wants {bad}")
    return {k: f"cuda:{v}" for k, v in dmap.items()}


def device_of(name: str, dmap: dict[str, str]) -> str:
    """The device of a parameter/buffer name: the longest matching module prefix of the map."""
    best = None
    for prefix in dmap:
        if prefix == "" or name == prefix or name.startswith(prefix + "."):
            if best is None or len(prefix) > len(best):
                best = prefix
    if best is None:
        raise KeyError(f"{name} is in no entry of the device map")
    return dmap[best]


def param_seed(name: str, seed: int) -> int:
    """A generator seed from the run's seed and the parameter's name only (not its device or order)."""
    return (seed * 1_000_003 + zlib.crc32(name.encode("utf-8"))) % (2**63)


def init_value(name: str, shape: torch.Size, dtype: torch.dtype, device: str, seed: int, std: float) -> torch.Tensor:
    """RMSNorm weights (1-D ``*norm.weight``) are ones; every other parameter N(0, std), seeded by name."""
    if len(shape) == 1 and name.endswith("norm.weight"):
        return torch.ones(shape, dtype=dtype, device=device)
    gen = torch.Generator(device=device).manual_seed(param_seed(name, seed))
    return torch.empty(shape, dtype=dtype, device=device).normal_(0.0, std, generator=gen)


def materialise(
    model: torch.nn.Module, dmap: dict[str, str], *, dtype: torch.dtype, seed: int = 0, std: float = 0.02, names=None
) -> None:
    """Every meta parameter made on its device with its seeded value; the rotary buffers recomputed."""
    params = dict(model.named_parameters())
    for name in names if names is not None else list(params):
        module_name, _, leaf = name.rpartition(".")
        module = model.get_submodule(module_name)
        value = init_value(name, params[name].shape, dtype, device_of(name, dmap), seed, std)
        module._parameters[leaf] = torch.nn.Parameter(value, requires_grad=False)
    body = model.model
    rotary_cls = type(body.rotary_emb)
    rotary = rotary_cls(config=model.config)  # built outside the meta context: the library's own inv_freq
    body.rotary_emb = rotary.to(device_of("model.rotary_emb", dmap))
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.device.type == "meta"]
    if left and names is None:
        raise RuntimeError(f"still on the meta device after materialising: {left[:5]}")


def dispatch(model: torch.nn.Module, dmap: dict[str, str]) -> torch.nn.Module:
    """accelerate's hooks: each block runs on its device, activations move with it."""
    from accelerate import dispatch_model

    devices = {d for d in dmap.values()}
    if len(devices) == 1:
        return model
    return dispatch_model(model, device_map={k: int(v.split(":")[1]) for k, v in dmap.items()})


def layout(dmap: dict[str, str], model: torch.nn.Module) -> dict[str, Any]:
    """Per device: the layers it holds and its parameter bytes."""
    out: dict[str, Any] = {}
    for name, p in model.named_parameters():
        d = out.setdefault(str(p.device), {"layers": set(), "bytes": 0})
        d["bytes"] += p.numel() * p.element_size()
        if name.startswith("model.layers."):
            d["layers"].add(int(name.split(".")[2]))
    return {
        k: {
            "layers": f"{min(v['layers'])}-{max(v['layers'])}" if v["layers"] else "-",
            "GiB": round(v["bytes"] / GiB, 2),
        }
        for k, v in out.items()
    }


def gpu_memory(devices: list[str], peak: bool) -> dict[str, float]:
    if not devices[0].startswith("cuda"):
        return {}
    fn = torch.cuda.max_memory_allocated if peak else torch.cuda.memory_allocated
    return {d: round(fn(int(d.split(":")[1])) / GiB, 2) for d in devices}


def build(args: argparse.Namespace, cfg, devices: list[str]) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Meta init -> device map -> seeded materialisation on each device -> dispatch; with timings."""
    dtype = torch.float16 if devices[0].startswith("cuda") else torch.float32
    t0 = time.perf_counter()
    model = empty_model(cfg)
    if args.split == "auto":
        dmap = auto_map(model, gpu_budget(devices, args.headroom))
    else:
        dmap = balanced_map(cfg, devices)
    materialise(model, dmap, dtype=dtype, seed=args.seed)
    if devices[0].startswith("cuda"):
        for d in devices:
            torch.cuda.synchronize(d)
    model = dispatch(model, dmap)
    n_params = sum(p.numel() for p in model.parameters())
    info = {
        "devices": devices,
        "split": args.split,
        "n_params": n_params,
        "GiB": round(sum(p.numel() * p.element_size() for p in model.parameters()) / GiB, 2),
        "build_s": round(time.perf_counter() - t0, 2),
        "layout": layout(dmap, model),
        "weights_GiB_per_gpu": gpu_memory(devices, peak=False),
    }
    return model, info


def _sync_all(devices: list[str]) -> None:
    if devices[0].startswith("cuda"):
        for d in devices:
            torch.cuda.synchronize(d)


def _reset_peaks(devices: list[str]) -> None:
    if devices[0].startswith("cuda"):
        for d in devices:
            torch.cuda.reset_peak_memory_stats(d)


def score_plain(model, tokens, text, args, devices: list[str]) -> dict[str, Any]:
    """pplgate's engine on the dispatched model (plain device_map: one stage at a time)."""
    from pplgate.protocol.engine import evaluate_perplexity

    _reset_peaks(devices)
    r = evaluate_perplexity(
        model, tokens, text, seqlen=args.seqlen, batch_size=args.batch_size, max_windows=args.windows, progress=False
    )
    return {
        "ppl": r.ppl,
        "window_nlls": r.window_nlls,
        "n_windows": r.n_windows,
        "n_windows_total": r.n_windows_total,
        "wall_s": round(r.wall_time_s, 2),
        "tok_per_s": round(r.tokens_per_s, 1),
        "peak_GiB_per_gpu": gpu_memory(devices, peak=True),
    }


def score_pipelined(model, tokens, args, devices: list[str]) -> dict[str, Any]:
    """The same batches with the stages overlapped (layer_pipeline.py)."""
    from pplgate.protocol.windows import make_windows, perplexity

    windows = make_windows(tokens.ids, args.seqlen)
    if args.windows:
        windows = windows[: args.windows]
    stages = even_stages(model.config.num_hidden_layers, args.stages) if args.stages else None
    _reset_peaks(devices)
    _sync_all(devices)
    t0 = time.perf_counter()
    nlls = pipelined_window_nlls(model, windows, batch_size=args.batch_size, stages=stages)
    _sync_all(devices)
    wall = time.perf_counter() - t0
    return {
        "ppl": perplexity(nlls),
        "window_nlls": nlls,
        "n_windows": len(nlls),
        "wall_s": round(wall, 2),
        "tok_per_s": round(len(nlls) * args.seqlen / wall, 1),
        "peak_GiB_per_gpu": gpu_memory(devices, peak=True),
        "stages": stages or "by device",
    }


def compare(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Window by window: identical, or the largest |dNLL|."""
    diffs = [abs(x - y) for x, y in zip(a["window_nlls"], b["window_nlls"], strict=True)]
    return {
        "identical": a["window_nlls"] == b["window_nlls"],
        "max_abs_dnll": max(diffs),
        "ppl_diff": a["ppl"] - b["ppl"],
    }


def describe(label: str, r: dict[str, Any]) -> str:
    extra = f" ({r['speedup_vs_plain']}x plain)" if "speedup_vs_plain" in r else ""
    return (
        f"{label}: ppl {r['ppl']:.6f} over {r['n_windows']} windows, {r['tok_per_s']} tok/s{extra}, "
        f"{r['wall_s']}s, peak GiB {r['peak_GiB_per_gpu']}"
    )


def release_memory() -> None:
    """After the caller dropped its last reference to a model: collect it (hooks form cycles), free the cache."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokenizer", required=True, help="the Llama-2 tokenizer directory (vocabulary 32000)")
    ap.add_argument("--shape", choices=sorted(SHAPES), default="70b")
    ap.add_argument("--gpus", type=int, default=None, help="use cuda:0..N-1 (default: every visible GPU)")
    ap.add_argument("--device", default="cuda", help="cuda, or cpu for a check of the code with --shape tiny")
    ap.add_argument("--split", choices=["balanced", "auto"], default="balanced")
    ap.add_argument("--headroom", type=float, default=0.1, help="with --split auto: fraction of each GPU kept free")
    ap.add_argument("--windows", type=int, default=None, help="score the first K windows (default: all)")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--seqlen", type=int, default=2048)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pipeline", action="store_true", help="also score with the stages overlapped and compare")
    ap.add_argument("--stages", type=int, default=None, help="pipeline stages (default: one per device; CPU checks)")
    ap.add_argument("--check-single", action="store_true", help="also build on one device and compare the NLLs")
    ap.add_argument("--dataset", default=None, help="WikiText-2 test split (default: $PPLGATE_WIKITEXT, ...)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    from transformers import AutoTokenizer

    from pplgate.protocol.dataset import load_canonical_text
    from pplgate.protocol.tokens import tokenize_canonical

    if args.device == "cpu":
        devices = ["cpu"]
    else:
        n = args.gpus or torch.cuda.device_count()
        if n < 1 or n > torch.cuda.device_count():
            raise SystemExit(f"--gpus {args.gpus}: {torch.cuda.device_count()} GPU(s) visible")
        devices = [f"cuda:{i}" for i in range(n)]
    tok = AutoTokenizer.from_pretrained(args.tokenizer)
    text = load_canonical_text(args.dataset)
    tokens = tokenize_canonical(tok, text.text)
    cfg = make_config(args.shape, len(tok))
    report: dict[str, Any] = {"shape": args.shape, "config": {k: getattr(cfg, k) for k in (
        "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
        "vocab_size")}, "batch_size": args.batch_size, "seqlen": args.seqlen}  # fmt: skip
    if devices[0].startswith("cuda"):
        report["gpus"] = [torch.cuda.get_device_name(d) for d in devices]
    model, report["build"] = build(args, cfg, devices)
    print(f"built {args.shape}: {report['build']['n_params'] / 1e9:.2f}e9 params, {report['build']['GiB']} GiB in "
          f"{report['build']['build_s']}s; layout {report['build']['layout']}", flush=True)  # fmt: skip
    report["plain"] = score_plain(model, tokens, text, args, devices)
    print(describe("plain device_map", report["plain"]), flush=True)
    if args.pipeline:
        report["pipelined"] = score_pipelined(model, tokens, args, devices)
        report["pipelined_vs_plain"] = compare(report["pipelined"], report["plain"])
        report["pipelined"]["speedup_vs_plain"] = round(report["plain"]["wall_s"] / report["pipelined"]["wall_s"], 3)
        print(describe("pipelined", report["pipelined"]), report["pipelined_vs_plain"], flush=True)
    if args.check_single:
        model = None
        release_memory()
        one = argparse.Namespace(**{**vars(args), "split": "balanced"})
        single, report["single_build"] = build(one, cfg, devices[:1])
        report["single"] = score_plain(single, tokens, text, args, devices[:1])
        report["split_vs_single"] = compare(report["plain"], report["single"])
        print(describe("single device", report["single"]), "split vs single:", report["split_vs_single"], flush=True)
    ok = all(report[k]["identical"] for k in ("pipelined_vs_plain", "split_vs_single") if k in report)
    report["all_identical"] = ok
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1))
        print(f"wrote {args.json}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
