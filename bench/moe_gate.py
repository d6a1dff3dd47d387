"""A mixture-of-experts model of a real model's layer shape, random weights, through the gate.

    python bench/moe_gate.py WORK --shape qwen3-30b-a3b --layers 4 --tokenizer TOKENIZER_DIR [--device cuda]

writes ``WORK/model`` (config, safetensors, the tokenizer) and ``WORK/baselines/moe.yaml`` (fp16, rtn, gptq
and llm-compressor AWQ, each compared with fp16), then run the gate on it, e.g.::

    pytest WORK/baselines/moe.yaml --rootdir WORK -p pplgate.plugin -m gpu --update-baselines \\
        --pplgate-cache off --pplgate-report WORK/report

The decoder layers have the real model's shapes (hidden size, experts, active experts, expert width,
attention heads); only the number of layers is cut so that fp16 fits one GPU. The vocabulary is the given
tokenizer's. Random weights make the perplexity meaningless; the KL divergence of each quantized variant
against fp16, its coverage and its times are what this measures.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

SHAPES = {  # the decoder layer of each model, from its published config
    "qwen3-30b-a3b": dict(
        model_type="qwen3_moe",
        hidden_size=2048,
        intermediate_size=6144,
        moe_intermediate_size=768,
        num_experts=128,
        num_experts_per_tok=8,
        num_attention_heads=32,
        num_key_value_heads=4,
        head_dim=128,
        norm_topk_prob=True,
    ),
    "mixtral-8x7b": dict(
        model_type="mixtral",
        hidden_size=4096,
        intermediate_size=14336,
        num_local_experts=8,
        num_experts_per_tok=2,
        num_attention_heads=32,
        num_key_value_heads=8,
    ),
}

SHAPES["tiny"] = dict(  # a check of this script and of the gate's path on a CPU in seconds
    model_type="qwen3_moe",
    hidden_size=128,
    intermediate_size=256,
    moe_intermediate_size=64,
    num_experts=8,
    num_experts_per_tok=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=32,
    norm_topk_prob=True,
)
GROUP = "{targets: [Linear], weights: {num_bits: 4, type: int, strategy: group, group_size: {g}, symmetric: false}}"
YAML = """\
# {shape} decoder layers x {layers}, random weights (bench/moe_gate.py); recorded by a real gate run.
schema_version: 1
model:
  name: {name}
  source: ../model
profiles:
  gpu:
    marker: {marker}
    device: {device}
    seqlen: 2048
    batch_size: 4
    max_windows: {windows}
    variants:
      {fp}:
        kind: {fp}
        tolerance:
          - {{type: absolute, max_delta: 0.005}}
      rtn-w4g{g}:
        kind: rtn
        params: {{w_bit: 4, q_group_size: {g}, zero_point: true}}
        reference: {fp}
        tolerance:
          - {{type: absolute, max_delta: 0.005}}
          - {{type: kld, max_delta: 0.0005}}
      gptq-w4g{g}:
        kind: gptq
        params:
          w_bit: 4
          q_group_size: {g}
          sym: false
          calibration: {{source: $PPLGATE_CALIBRATION, n_samples: {n_samples}, seqlen: 512}}
        reference: {fp}
        tolerance:
          - {{type: absolute, max_delta: 0.005}}
          - {{type: kld, max_delta: 0.0005}}
      llmc-awq-w4g{g}:
        kind: llmc-recipe
        params:
          recipe:
            - AWQModifier: {{}}
            - QuantizationModifier:
                targets: [Linear]
                ignore: [lm_head, 're:.*mlp.gate$']
                config_groups: {{group_0: {group}}}
          calibration: {{source: $PPLGATE_CALIBRATION, n_samples: {n_samples}, seqlen: 512}}
        reference: {fp}
        tolerance:
          - {{type: absolute, max_delta: 0.005}}
          - {{type: kld, max_delta: 0.0005}}
"""


def build(work: Path, shape: str, layers: int, tokenizer: Path, device: str, fp: str, seed: int) -> Path:
    """Save the random model with the tokenizer into ``work/model``; return the directory."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer))
    fields = dict(SHAPES[shape])
    config = AutoConfig.for_model(
        fields.pop("model_type"), num_hidden_layers=layers, vocab_size=len(tok), max_position_embeddings=4096, **fields
    )
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float16 if fp == "fp16" else torch.float32)
    out = work / "model"
    if out.exists():
        shutil.rmtree(out)
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    n = sum(p.numel() for p in model.parameters())
    print(f"moe_gate: {shape} x {layers} layers, {n / 1e9:.2f}B parameters, saved to {out}")
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("work", type=Path)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="qwen3-30b-a3b")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--tokenizer", type=Path, required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--fp", choices=["fp16", "fp32"], default="fp16", help="the reference's dtype (fp32 on a CPU)")
    ap.add_argument("--windows", type=int, default=16)
    ap.add_argument("--n-samples", type=int, default=64)
    ap.add_argument("--group", type=int, default=128, help="quantization group size (a divisor of every in-width)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    build(a.work, a.shape, a.layers, a.tokenizer, a.device, a.fp, a.seed)
    (a.work / "baselines").mkdir(parents=True, exist_ok=True)
    name = f"{a.shape}-{a.layers}l-random"
    text = YAML.format(
        shape=a.shape,
        layers=a.layers,
        name=name,
        device=a.device.split(":")[0],
        windows=a.windows,
        marker="gpu" if a.device.startswith("cuda") else "smoke",
        n_samples=a.n_samples,
        group=GROUP.replace("{g}", str(a.group)),
        g=a.group,
        fp=a.fp,
    )
    (a.work / "baselines" / "moe.yaml").write_text(text)
    print(f"moe_gate: wrote {a.work / 'baselines' / 'moe.yaml'}")


if __name__ == "__main__":
    main()
