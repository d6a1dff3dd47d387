"""The architecture conformance tier: every architecture teams quantize today x every kind, no silent wrong number.

Tiny random models built from transformers' own config classes (hidden 64, 2 decoder layers, 2 heads; MoE: 4
experts, 2 active), saved with the real GPT-2 tokenizer, measured in process through the Measurer the CLI and the
gate use (1 window of 64 tokens, 4 calibration texts of 64 tokens, the quantization cache on as by default). Each
cell is either a finite number whose coverage is 100% of the eligible decoder weights (routers kept) from a model
that differs from fp32, or a one-line PplgateError naming the architecture and the fix. ``MATRIX`` below is the
table of docs/ARCHITECTURES.md (:func:`test_the_docs_table_is_this_tier` keeps the two equal).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator

import pytest
import torch
import transformers as T
from support import REPO, calibration_file, gpt2_tokenizer, need_module, wikitext_path

need_module("llmcompressor", "pip install 'pplgate[llmcompressor]'", allow_module_level=True)
need_module("awq", "pip install --no-deps autoawq==0.2.9", allow_module_level=True)
for _module, _extra in (("bitsandbytes", "bnb"), ("torchao", "torchao"), ("hqq", "hqq")):
    need_module(_module, f"pip install 'pplgate[{_extra}]'", allow_module_level=True)

from pplgate.errors import PplgateError  # noqa: E402
from pplgate.measure import Measurer  # noqa: E402
from pplgate.models.source import ModelSource  # noqa: E402

B = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "max_position_embeddings": 256}
KV = {"num_key_value_heads": 2, "intermediate_size": 128}
MOE = {"num_experts_per_tok": 2}
ARCHS = {  # name -> (model_type, config factory); vocabulary and special tokens are the tokenizer's
    "llama": ("llama", lambda: T.LlamaConfig(**B, **KV)),
    "mistral": ("mistral", lambda: T.MistralConfig(**B, **KV, head_dim=32)),
    "qwen2": ("qwen2", lambda: T.Qwen2Config(**B, **KV)),
    "qwen3": ("qwen3", lambda: T.Qwen3Config(**B, **KV, head_dim=32)),
    "gemma2": ("gemma2", lambda: T.Gemma2Config(**B, **KV, head_dim=32, query_pre_attn_scalar=32)),
    "gemma3_text": ("gemma3_text", lambda: T.Gemma3TextConfig(**B, **KV, head_dim=32, query_pre_attn_scalar=32)),
    "phi3": ("phi3", lambda: T.Phi3Config(**B, **KV)),
    "granite": ("granite", lambda: T.GraniteConfig(**B, **KV)),
    "olmo2": ("olmo2", lambda: T.Olmo2Config(**B, **KV)),
    "gpt_neox": ("gpt_neox", lambda: T.GPTNeoXConfig(**B, intermediate_size=128)),
    "starcoder2": ("starcoder2", lambda: T.Starcoder2Config(**B, **KV)),
    "falcon (old layout)": ("falcon", lambda: T.FalconConfig(**B, new_decoder_architecture=False, multi_query=True)),
    "falcon (new layout)": ("falcon", lambda: T.FalconConfig(**B, new_decoder_architecture=True, num_kv_heads=2)),
    "mixtral": ("mixtral", lambda: T.MixtralConfig(**B, **KV, **MOE, num_local_experts=4)),
    "qwen2_moe": ("qwen2_moe", lambda: T.Qwen2MoeConfig(
        **B, **KV, **MOE, moe_intermediate_size=64, shared_expert_intermediate_size=64, num_experts=4)),
    "qwen3_moe": ("qwen3_moe", lambda: T.Qwen3MoeConfig(
        **B, **KV, **MOE, moe_intermediate_size=64, num_experts=4, head_dim=32)),
    "deepseek_v3": ("deepseek_v3", lambda: T.DeepseekV3Config(
        **B, **KV, **MOE, moe_intermediate_size=64, n_routed_experts=4, first_k_dense_replace=1, q_lora_rank=64,
        kv_lora_rank=64, qk_rope_head_dim=32, qk_nope_head_dim=32, v_head_dim=32, n_group=1, topk_group=1)),
    "gpt_oss": ("gpt_oss", lambda: T.GptOssConfig(**B, **KV, **MOE, num_local_experts=4, head_dim=32)),
    "llama4_text": ("llama4_text", lambda: T.Llama4TextConfig(
        **B, **KV, intermediate_size_mlp=128, num_local_experts=4, num_experts_per_tok=1, head_dim=32)),
}  # fmt: skip
MOE_ARCHS = {"mixtral", "qwen2_moe", "qwen3_moe", "deepseek_v3", "gpt_oss", "llama4_text"}

G = {"num_bits": 4, "type": "int", "strategy": "group", "group_size": 32, "symmetric": False}
QUANT = {"QuantizationModifier": {"targets": ["Linear"], "ignore": ["lm_head", "re:.*mlp\\.gate$"],
                                  "config_groups": {"group_0": {"targets": ["Linear"], "weights": G}}}}  # fmt: skip
# AWQModifier `mappings:` for the architectures whose default mappings do not fit (docs/ARCHITECTURES.md shows them)
MAPPINGS = {
    "olmo2": [  # norms after attention and MLP: only v -> o and up -> down can be smoothed
        {"smooth_layer": "re:.*v_proj$", "balance_layers": ["re:.*o_proj$"]},
        {"smooth_layer": "re:.*up_proj$", "balance_layers": ["re:.*down_proj$"]},
    ],
    "gpt_neox": [
        {"smooth_layer": "re:.*input_layernorm$", "balance_layers": ["re:.*query_key_value$"]},
        {"smooth_layer": "re:.*post_attention_layernorm$", "balance_layers": ["re:.*dense_h_to_4h$"]},
    ],
    "starcoder2": [
        {"smooth_layer": "re:.*input_layernorm$", "balance_layers": ["re:.*q_proj$", "re:.*k_proj$", "re:.*v_proj$"]},
        {"smooth_layer": "re:.*v_proj$", "balance_layers": ["re:.*o_proj$"]},
        {"smooth_layer": "re:.*post_attention_layernorm$", "balance_layers": ["re:.*c_fc$"]},
    ],
    "falcon (old layout)": [  # attention and MLP in parallel behind one norm
        {"smooth_layer": "re:.*input_layernorm$", "balance_layers": ["re:.*query_key_value$", "re:.*dense_h_to_4h$"]},
    ],
    "falcon (new layout)": [
        {"smooth_layer": "re:.*ln_attn$", "balance_layers": ["re:.*query_key_value$"]},
        {"smooth_layer": "re:.*ln_mlp$", "balance_layers": ["re:.*dense_h_to_4h$"]},
    ],
    "deepseek_v3": [  # as llm-compressor's GLM-4 lite mappings: the dense first layer has no router to balance
        {"smooth_layer": "re:.*input_layernorm$", "balance_layers": ["re:.*q_a_proj$", "re:.*kv_a_proj_with_mqa$"]},
        {"smooth_layer": "re:.*q_a_layernorm$", "balance_layers": ["re:.*q_b_proj$"]},
        {"smooth_layer": "re:.*kv_a_layernorm$", "balance_layers": ["re:.*kv_b_proj$"]},
        {"smooth_layer": "re:.*post_attention_layernorm$", "balance_layers": ["re:.*gate_proj$", "re:.*up_proj$"]},
        {"smooth_layer": "re:.*up_proj$", "balance_layers": ["re:.*down_proj$"]},
    ],
}


NF4 = {"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "nf4"}
TORCHAO_INT4 = {
    "quant_method": "torchao", "quant_type": "IntxWeightOnlyConfig", "weight_dtype": "int4",
    "granularity": {"per_group": 32},
}  # fmt: skip


def cal() -> dict:
    return {"source": str(calibration_file()), "n_samples": 4, "seqlen": 64}


def awq_recipe(arch: str | None = None) -> list:
    awq: dict = {"n_grid": 3, **({"mappings": MAPPINGS[arch]} if arch else {})}
    return [{"AWQModifier": awq}, QUANT]


KINDS = {  # column -> (kind, params(arch)); hf-checkpoint and awq-checkpoint load the gptq / awq cache entry
    "fp32": ("fp32", lambda a: {}),
    "rtn": ("rtn", lambda a: {"q_group_size": 32}),
    "gptq": ("gptq", lambda a: {"q_group_size": 32, "calibration": cal()}),
    "hf-checkpoint": ("hf-checkpoint", None),
    "llmc-recipe AWQ": ("llmc-recipe", lambda a: {"recipe": awq_recipe(), "calibration": cal()}),
    "llmc-recipe AWQ + mappings": ("llmc-recipe", lambda a: {"recipe": awq_recipe(a), "calibration": cal()}),
    "awq": ("awq", lambda a: {"q_group_size": 32, "calibration": cal()}),
    "awq-checkpoint": ("awq-checkpoint", None),
    "transformers bnb nf4": ("transformers", lambda a: {"quantization_config": NF4}),
    "transformers torchao int4": ("transformers", lambda a: {"quantization_config": TORCHAO_INT4}),
    "hqq": ("hqq", lambda a: {"group_size": 32}),
}
# refusals: (what the one-line message must match besides the architecture, the table's label, the legend's words)
WHY = {
    "autoawq-arch": (
        r"AutoAWQ 0\.2\.9 does not support architecture .*; measure this .* model with the kinds rtn, gptq or llmc",
        "no AutoAWQ class",
        "refused before any work: AutoAWQ 0.2.9 has no model class for the architecture",
    ),
    "autoawq-layout": (
        r"AutoAWQ 0\.2\.9 lists .* but cannot quantize it as transformers 5 builds it .*; measure this .* with",
        "AutoAWQ layout",
        "refused before any work: AutoAWQ 0.2.9 lists the architecture, but its class walks one Linear per expert "
        "(transformers 5 fuses experts into 3-D tensors) or reads Falcon's layout from the head count",
    ),
    "mappings": (
        r"llmcompressor [\d.]+ failed \(this .* model\): .*give it `mappings:` for this architecture",
        "AWQ mappings",
        "llm-compressor's default AWQ mappings do not fit the architecture (its ValueError, one line); the fix is "
        "`mappings:` for AWQModifier (below)",
    ),
    "awq-nothing": (
        r"AWQModifier matched none of its mappings on this .* model and smoothed nothing.*give it `mappings:`",
        "AWQ smooths nothing",
        "the default AWQ mappings match no module, which llm-compressor accepts silently: the number would be the "
        "quantization step's alone; refused, the fix is `mappings:`",
    ),
    "reload-keys": (
        r"does not load as the model it was saved from: .*(MISSING|UNEXPECTED).*--pplgate-cache off",
        "reload: keys",
        "the saved compressed-tensors checkpoint does not load back with transformers 5.17 (MISSING / UNEXPECTED "
        "keys: per-expert tensors on fused experts, Falcon's lm_head); `--pplgate-cache off` measures the model "
        "in memory instead",
    ),
    "reload-asym": (
        r"cannot load it \(this .* model\): .*Asymmetric quant requires zero-point values.*--pplgate-cache off",
        "reload: zero points",
        "transformers 5.17 fuses the experts of the saved checkpoint on load and drops their zero points "
        "(asymmetric schemes only: gptq's default symmetric one loads); `--pplgate-cache off` measures in memory",
    ),
    "experts": (
        r"^(transformers|hqq): \d+ eligible decoder weights of this .* model were left unquantized \(.*experts\.",
        "experts left float",
        "bitsandbytes, torchao and HQQ quantize Linears: transformers 5's fused 3-D expert tensors stay in full "
        "precision, and a partly quantized model gets no number",
    ),
    "nothing": (
        r"^transformers: nothing was quantized in this .* model: no decoder weight holds quantized values",
        "nothing quantized",
        "bitsandbytes through transformers 5.17 converts none of Falcon's Linears: the number would be the float "
        "model's",
    ),
    "ao-op": (
        r"^transformers: torchao [\d.]+ cannot run it \(this .* model\): NotImplementedError: .*aten\.permute",
        "torchao: no op",
        "torchao's int4 weight tensor implements no `permute`, which Falcon's Linear calls (`weight.T`)",
    ),
    "hqq-layout": (
        r"^hqq: HQQ \S+'s AutoHQQHFModel finds the decoder blocks at model\.layers only, which this .* model \(",
        "HQQ layout",
        "HQQ's AutoHQQHFModel finds the blocks at `model.layers` only (GPT-NeoX and Falcon keep them elsewhere)",
    ),
    "llmc": (
        r"llmcompressor [\d.]+ failed \(this .* model\): .*lists the kinds that do",
        "llm-compressor fails",
        "llm-compressor 0.14 raises on the text-only Llama 4 config (it expects the multimodal one's text_config)",
    ),
}
REFUSED = {
    **{(a, "awq"): "autoawq-arch" for a in ("gemma3_text", "granite", "olmo2", "qwen2_moe", "gpt_oss", "llama4_text")},
    **{(a, "awq"): "autoawq-layout" for a in ("falcon (old layout)", "falcon (new layout)", "mixtral", "qwen3_moe")},
    ("deepseek_v3", "awq"): "autoawq-layout",
    **{(a, "llmc-recipe AWQ"): "mappings" for a in ("olmo2", "gpt_neox", "starcoder2", "falcon (old layout)")},
    ("deepseek_v3", "llmc-recipe AWQ"): "mappings",
    **{(a, "gptq"): "reload-keys" for a in ("falcon (old layout)", "falcon (new layout)", "mixtral", "gpt_oss")},
    ("falcon (new layout)", "llmc-recipe AWQ"): "awq-nothing",
    **{(a, "llmc-recipe AWQ"): "reload-keys" for a in ("mixtral", "gpt_oss")},
    **{(a, "llmc-recipe AWQ"): "reload-asym" for a in ("qwen2_moe", "qwen3_moe")},
    **{(a, "llmc-recipe AWQ + mappings"): "reload-keys" for a in ("falcon (old layout)", "falcon (new layout)")},
    ("deepseek_v3", "llmc-recipe AWQ + mappings"): "reload-asym",
    **{(a, c): "experts" for a in MOE_ARCHS for c in ("transformers bnb nf4", "transformers torchao int4", "hqq")},
    **{(a, "transformers bnb nf4"): "nothing" for a in ("falcon (old layout)", "falcon (new layout)")},
    **{(a, "transformers torchao int4"): "ao-op" for a in ("falcon (old layout)", "falcon (new layout)")},
    **{(a, "hqq"): "hqq-layout" for a in ("gpt_neox", "falcon (old layout)", "falcon (new layout)")},
    ("llama4_text", "gptq"): "llmc",
    ("llama4_text", "llmc-recipe AWQ"): "llmc",
}


def columns(arch: str) -> list[str]:
    """The cells of one architecture: a checkpoint column only where its quantizing kind works."""
    out = [c for c in KINDS if c not in ("hf-checkpoint", "awq-checkpoint", "llmc-recipe AWQ + mappings")]
    out += ["hf-checkpoint"] if (arch, "gptq") not in REFUSED else []
    out += ["awq-checkpoint"] if (arch, "awq") not in REFUSED else []
    out += ["llmc-recipe AWQ + mappings"] if arch in MAPPINGS else []
    return out


CELLS = [(arch, col) for arch in ARCHS for col in columns(arch)]


class Tier:
    """One Measurer for the module (tokens once, the quantization cache in a temp dir), models built on demand."""

    def __init__(self, root) -> None:
        self.root = root
        self.measurer = Measurer(dataset=str(wikitext_path()), cache_dir=str(root / "cache"), cache_mode="use")
        self.tokenizer = gpt2_tokenizer()
        self.sources: dict[str, ModelSource] = {}

    def source(self, arch: str) -> ModelSource:
        if arch not in self.sources:
            tok = self.tokenizer
            config = ARCHS[arch][1]()
            config.vocab_size, config.bos_token_id, config.eos_token_id = len(tok), tok.bos_token_id, tok.eos_token_id
            torch.manual_seed(0)
            model = T.AutoModelForCausalLM.from_config(config)
            path = self.root / arch.replace(" ", "_").replace("(", "").replace(")", "")
            model.save_pretrained(str(path))
            tok.save_pretrained(str(path))
            self.sources[arch] = ModelSource(str(path))
        return self.sources[arch]

    def measure(self, arch: str, col: str):
        kind, params = KINDS[col]
        if kind in ("hf-checkpoint", "awq-checkpoint"):  # the cache entry its quantizing kind wrote
            quantizer = "gptq" if kind == "hf-checkpoint" else "awq"
            built = self.measurer.prepare(
                self.source(arch), kind=quantizer, params=KINDS[quantizer][1](arch), device="cpu"
            )
            params = lambda a: {"checkpoint": str(built.info["cache_entry"]) + "/model"}  # noqa: E731
        return self.measurer.measure(
            self.source(arch), kind=kind, params=params(arch), device="cpu", seqlen=64, max_windows=1
        )


@pytest.fixture(scope="module")
def tier(tmp_path_factory) -> Iterator[Tier]:
    """The module's Tier, on one thread: these models are so small that a second thread only waits (on a busy
    2-core runner, each op's barrier waited for a descheduled thread: 3-15x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield Tier(tmp_path_factory.mktemp("architectures"))
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize(("arch", "col"), CELLS, ids=[f"{a}-{c}".replace(" ", "_") for a, c in CELLS])
def test_a_number_with_full_coverage_or_a_one_line_refusal(tier, arch, col):
    model_type = ARCHS[arch][0]
    why = REFUSED.get((arch, col))
    if why is not None:
        with pytest.raises(PplgateError) as exc:
            tier.measure(arch, col)
        message = str(exc.value)
        assert "\n" not in message and model_type in message, message
        assert re.search(WHY[why][0], message), message
        return
    m = tier.measure(arch, col)
    assert math.isfinite(m.result.ppl) and m.result.ppl > 1
    if col == "fp32":
        return
    assert m.result.ppl != tier.measure(arch, "fp32").result.ppl  # the quantized model is not the float one
    coverage = m.extra["prepare_info"]["coverage"]
    q, e = re.match(r"quantized ([\d,]+) of ([\d,]+) decoder weight parameters \(100\.0%\)", coverage).groups()
    assert q == e and "left unquantized" not in coverage and "routers quantized" not in coverage, coverage
    assert ("routers kept (" in coverage) == (arch in MOE_ARCHS), coverage


def render_matrix() -> str:
    """The matrix of docs/ARCHITECTURES.md: architecture x kind -> works / refused (label), then the legend."""
    cols = list(KINDS)
    lines = ["| architecture | " + " | ".join(cols) + " |", "| --- " * (len(cols) + 1) + "|"]
    for arch in ARCHS:
        have = columns(arch)
        cells = ["—" if c not in have else "works" if (arch, c) not in REFUSED else None for c in cols]
        cells = [cell or f"refused: {WHY[REFUSED[(arch, c)]][1]}" for c, cell in zip(cols, cells, strict=True)]
        lines.append(f"| {arch} | " + " | ".join(cells) + " |")
    lines += ["", "Refusals (each one PplgateError line naming the architecture and the fix):", ""]
    lines += [f"- **{label}**: {words}" for _, label, words in WHY.values()]
    return "\n".join(lines)


def test_the_docs_table_is_this_tier():
    doc = (REPO / "docs" / "ARCHITECTURES.md").read_text(encoding="utf-8")
    table = doc.split("<!-- matrix: tests/models/test_architectures.py -->\n", 1)[1].split("<!-- end -->", 1)[0]
    assert table.strip() == render_matrix(), (
        "docs/ARCHITECTURES.md's matrix differs; render_matrix():\n" + render_matrix()
    )
