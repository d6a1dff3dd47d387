"""The Measurer: one wiring of text -> tokens -> model/variant -> engine, with its session caches.

A tiny seeded Llama saved to a temporary directory (the real GPT-2 tokenizer) and a short non-canonical
text keep every measurement well under a second.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import save_tiny_llama, write_jsonl, wrong_token_lm

import pplgate.inputs as inputs_mod
import pplgate.measure as measure_mod
from pplgate.errors import DatasetError, DatasetNotFound, PerplexityOverflowError, VariantError
from pplgate.measure import Measurement, Measurer, plain, scalar_info
from pplgate.models import registry
from pplgate.models.source import ModelSource
from pplgate.models.variant import PreparedModel, Variant

FP_KEYS = [
    "dataset_sha256",
    "n_tokens",
    "n_windows",
    "n_windows_total",
    "bos_added",
    "tokenizer_name",
    "tokenizer_sha256",
    "seqlen",
    "dtype",
    "device_type",
    "variant",
]
TEXT = ["The quick brown fox jumps over the lazy dog near the bank of the river. " * 30] * 4
SHORT = dict(seqlen=64, max_windows=2)


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> ModelSource:
    return ModelSource(str(save_tiny_llama(tmp_path_factory.mktemp("measure") / "tiny-llama", hidden=64, inter=128)))


@pytest.fixture(scope="module")
def text_file(tmp_path_factory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("measure-text") / "text.jsonl", TEXT)


@pytest.fixture
def counts(monkeypatch) -> dict[str, int]:
    """How often the Measurer loads a tokenizer, tokenizes, and loads a model."""
    import pplgate.models.token_cache as token_cache

    n = {"load_tokenizer": 0, "tokenize_canonical": 0, "load_model": 0}
    for name in n:
        module = token_cache if name == "tokenize_canonical" else inputs_mod
        real = getattr(module, name)

        def counted(*a, _real=real, _name=name, **k):
            n[_name] += 1
            return _real(*a, **k)

        monkeypatch.setattr(module, name, counted)
    return n


@pytest.fixture
def measurer(text_file, tmp_path) -> Measurer:
    return Measurer(dataset=str(text_file), allow_noncanonical=True, cache_dir=str(tmp_path / "cache"))


class _Counting(Variant):
    """fp32, counting its checks and prepares."""

    kind = "test-measure-counting"
    checks: list = []
    prepares: list = []

    def fingerprint(self):
        return {"kind": self.kind, "note": self.params.get("note", "x")}

    def check(self, ctx):
        _Counting.checks.append(ctx)

    def prepare(self, ctx):
        self.ensure_checked(ctx)
        _Counting.prepares.append(ctx)
        t0 = time.perf_counter()
        return PreparedModel(ctx.load("fp32"), "loaded", time.perf_counter() - t0, {"path": "/x", "s": 1.234})


@pytest.fixture
def counting(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTERED", {**registry._REGISTERED, _Counting.kind: _Counting})
    monkeypatch.setattr(_Counting, "checks", [])
    monkeypatch.setattr(_Counting, "prepares", [])
    return _Counting


def test_measurement_carries_the_protocol_fingerprint(measurer, source) -> None:
    m = measurer.measure(source, kind="fp32", params={}, device="cpu", **SHORT)
    assert isinstance(m, Measurement) and m.origin == "loaded" and m.prepare_time_s >= 0
    assert list(m.fingerprint) == FP_KEYS
    r = m.result
    assert m.fingerprint["n_windows"] == r.n_windows == 2 and m.fingerprint["seqlen"] == 64
    assert m.fingerprint["dtype"] == "float32" and m.fingerprint["variant"] == {"kind": "fp32", "dtype": "fp32"}
    assert m.fingerprint["tokenizer_name"] == "GPT2Tokenizer(local)"  # a local path: no directory name (moves)
    assert m.fingerprint["device_type"] == "cpu"
    assert m.fingerprint["dataset_sha256"] == measurer.text().sha256 and not r.canonical
    assert set(m.extra) == {"prepare_info", "phases", "caches"}  # no device_layout on CPU
    assert m.extra["prepare_info"] == {} and m.extra["caches"] == {"token_cache": "built"}


def test_the_same_request_is_measured_once(measurer, source, counts, counting) -> None:
    a = measurer.measure(source, kind=counting.kind, params={"note": "a"}, device="cpu", **SHORT)
    b = measurer.measure(source, kind=counting.kind, params={"note": "a"}, device="cpu", **SHORT, label="other")
    assert a is b and len(counting.prepares) == 1
    assert len(counting.checks) == 1  # checked once, before the model loads; prepare() does not check again
    c = measurer.measure(source, kind=counting.kind, params={"note": "a"}, device="cpu", seqlen=64, max_windows=1)
    assert c is not a and c.result.n_windows == 1 and len(counting.prepares) == 2
    assert counts["load_model"] == 1  # the float model is loaded once per session
    assert a.extra["prepare_info"] == {"path": "/x", "s": 1.23}  # scalar facts, rounded


def test_two_variants_share_one_tokenization(measurer, source, counts) -> None:
    fp32 = measurer.measure(source, kind="fp32", params={}, device="cpu", **SHORT)
    rtn = measurer.measure(source, kind="rtn", params={"q_group_size": 32}, device="cpu", **SHORT)
    assert counts == {"load_tokenizer": 1, "tokenize_canonical": 1, "load_model": 1}  # rtn: a copy, no 2nd load
    assert rtn.origin == "quantized" and rtn.result.ppl != fp32.result.ppl
    assert {k: v for k, v in rtn.fingerprint.items() if k not in ("variant", "coverage")} == {
        k: v for k, v in fp32.fingerprint.items() if k != "variant"
    }
    assert "coverage" not in fp32.fingerprint and rtn.fingerprint["coverage"].endswith("(100.0%)")
    tok, tokens, name = measurer.tokens(source, None)
    assert measurer.tokens(source, None)[1] is tokens and counts["tokenize_canonical"] == 1


def test_a_variant_that_changes_weights_first_never_de_quantizes_twice(
    source, text_file, tmp_path, counts, monkeypatch
) -> None:
    """RTN before fp32 on a GGUF-like source: RTN's load (not kept: memory as before) fills the base-model
    cache, fp32 reads it back; the de-quantizing loader runs once, and RTN changed a private model."""
    import pplgate.models.base_cache as base_cache

    for module in (inputs_mod, base_cache):  # the tiny directory stands in for a GGUF
        monkeypatch.setattr(module, "cacheable", lambda src: True)
    m = Measurer(dataset=str(text_file), allow_noncanonical=True, cache_dir=str(tmp_path / "cache"))
    rtn = m.measure(source, kind="rtn", params={"q_group_size": 32}, device="cpu", **SHORT)
    fp32 = m.measure(source, kind="fp32", params={}, device="cpu", **SHORT)
    assert counts["load_model"] == 1 and rtn.result.ppl != fp32.result.ppl
    assert rtn.extra["caches"]["base_cache"] == "built" and fp32.extra["caches"]["base_cache"] == "hit"
    fresh = Measurer(dataset=str(text_file), allow_noncanonical=True, cache_dir=str(tmp_path / "other"))
    assert fresh.measure(source, kind="fp32", params={}, device="cpu", **SHORT).result.ppl == fp32.result.ppl


def test_a_second_session_reads_the_tokens_from_the_cache(source, text_file, tmp_path, counts) -> None:
    """The token cache: the next Measurer on the same cache tokenizes nothing and measures the same number."""
    first = Measurer(dataset=str(text_file), allow_noncanonical=True, cache_dir=str(tmp_path / "cache"))
    a = first.measure(source, kind="fp32", params={}, device="cpu", **SHORT)
    second = Measurer(dataset=str(text_file), allow_noncanonical=True, cache_dir=str(tmp_path / "cache"))
    b = second.measure(source, kind="fp32", params={}, device="cpu", **SHORT)
    assert counts["tokenize_canonical"] == 1
    assert (a.extra["caches"]["token_cache"], b.extra["caches"]["token_cache"]) == ("built", "hit")
    assert a.result.window_nlls == b.result.window_nlls and a.fingerprint == b.fingerprint
    off = Measurer(dataset=str(text_file), allow_noncanonical=True, cache_dir=str(tmp_path / "x"), cache_mode="off")
    c = off.measure(source, kind="fp32", params={}, device="cpu", **SHORT)
    assert counts["tokenize_canonical"] == 2 and c.extra["caches"]["token_cache"] == "off"
    assert c.fingerprint == a.fingerprint and not (tmp_path / "x").exists()


def test_the_config_is_read_once_per_session(measurer, source, monkeypatch) -> None:
    """Every variant's check asks for the source's config: one read per session, not one per check."""
    calls = []
    real = inputs_mod.load_config_cached

    def counted(src, cache):
        calls.append(src)
        return real(src, cache)

    monkeypatch.setattr(inputs_mod, "load_config_cached", counted)
    for group in (32, 16):
        measurer.measure(source, kind="rtn", params={"q_group_size": group}, device="cpu", **SHORT)
    assert calls == [source]


def test_phases_say_where_the_time_went(measurer, source) -> None:
    fp32 = measurer.measure(source, kind="fp32", params={}, device="cpu", **SHORT)
    rtn = measurer.measure(source, kind="rtn", params={"q_group_size": 32}, device="cpu", **SHORT)
    for m in (fp32, rtn):
        assert list(m.phases) == list(measure_mod.PHASES) and all(v >= 0 for v in m.phases.values())
        assert m.phases["evaluate_s"] == m.result.wall_time_s
        assert m.extra["phases"] == {k: round(v, 2) for k, v in m.phases.items()}  # into the provenance
        assert m.phases["load_s"] + m.phases["prepare_s"] == pytest.approx(m.prepare_time_s)
    assert fp32.phases["tokenize_s"] > 0 and rtn.phases["tokenize_s"] == 0  # tokenized once, by the first
    assert fp32.phases["load_s"] > 0 and rtn.phases["prepare_s"] > 0  # RTN's own work: the quantization


def test_free_drops_models_not_kept(measurer, source, counts) -> None:
    measurer.measure(source, kind="fp32", params={}, device="cpu", **SHORT)
    measurer.free({(source, "cpu")})  # still needed by a later item: kept
    measurer.measure(source, kind="fp32", params={}, device="cpu", seqlen=64, max_windows=1)
    assert counts["load_model"] == 1
    measurer.free({(ModelSource("/another/model"), "cpu")})
    measurer.measure(source, kind="fp32", params={}, device="cpu", seqlen=32, max_windows=1)
    assert counts["load_model"] == 2


def test_prepare_hands_its_model_to_the_next_measure(measurer, source, counting) -> None:
    prepared = measurer.prepare(source, kind=counting.kind, params={}, device="cpu")
    m = measurer.measure(source, kind=counting.kind, params={}, device="cpu", **SHORT)
    assert len(counting.prepares) == 1 and prepared.model is not None  # the caller keeps its model
    assert m.origin == prepared.origin
    measurer.measure(source, kind=counting.kind, params={}, device="cpu", seqlen=64, max_windows=1)
    assert len(counting.prepares) == 2  # handed over once


def test_bad_dataset_names_the_callers_option(source, tmp_path) -> None:
    m = Measurer(dataset=str(tmp_path / "missing.parquet"), dataset_option="--pplgate-dataset")
    with pytest.raises(DatasetError, match=r"missing.parquet does not exist.*\(from --pplgate-dataset\)") as first:
        m.text()
    with pytest.raises(DatasetError) as again:
        m.measure(source, kind="fp32", params={}, device="cpu")
    assert again.value is first.value  # looked up once; the error is kept


def test_missing_dataset_says_which_option_and_the_note(monkeypatch, source, tmp_path) -> None:
    for var in ("PPLGATE_WIKITEXT", "HF_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PPLGATE_SHARED", str(tmp_path / "no-shared"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    m = Measurer(dataset_option="--pplgate-dataset", missing_dataset_note="(a note from the caller)")
    with pytest.raises(DatasetNotFound) as info:
        m.tokens(source, None)
    msg = str(info.value)
    assert "pass --pplgate-dataset PATH" in msg and msg.endswith("\n(a note from the caller)")


def test_variant_errors_come_before_any_model_loads(measurer, source, counts) -> None:
    with pytest.raises(VariantError, match="unknown variant kind 'nope'"):
        measurer.measure(source, kind="nope", params={}, device="cpu")
    with pytest.raises(VariantError, match="q_group_size 48 does not fit"):
        measurer.measure(source, kind="rtn", params={"q_group_size": 48}, device="cpu")
    assert counts["load_model"] == 0


def test_bad_params_fail_before_the_text_or_tokenizer_loads(source, tmp_path, counts) -> None:
    m = Measurer(dataset=str(tmp_path / "missing.jsonl"))  # loading the text would fail
    with pytest.raises(VariantError, match="param zero_point must be a boolean .* write false, not 'false'"):
        m.measure(source, kind="rtn", params={"zero_point": "false"}, device="cpu")
    with pytest.raises(VariantError, match="param w_bit must be an integer"):
        m.prepare(source, kind="rtn", params={"w_bit": "4"}, device="cpu")
    assert counts == {"load_tokenizer": 0, "tokenize_canonical": 0, "load_model": 0}


def test_plain_and_scalar_info() -> None:
    class S(str):
        pass

    class I(int):  # noqa: E742 - a ruamel-like int subclass
        pass

    out = plain({"a": (1, S("x")), S("b"): {"c": I(3), "d": 1.5, "e": None, "f": True}})
    assert out == {"a": [1, "x"], "b": {"c": 3, "d": 1.5, "e": None, "f": True}}
    assert type(out["a"][1]) is str and type(out["b"]["c"]) is int
    info = {"t": 1.23456, "cache_entry": "/p", "load_path": "x", "calibration_source": "y", "n": 3, "l": [1]}
    assert scalar_info(info) == {"t": 1.23, "n": 3}


def test_import_pplgate_does_not_import_torch() -> None:
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([src, *sys.path]))
    code = (
        "import sys, pplgate, pplgate.errors, pplgate.gate.store, pplgate.models.registry; "
        "assert 'torch' not in sys.modules, 'torch imported'; "
        "assert pplgate.DatasetError is pplgate.errors.DatasetError; "
        "assert 'Measurer' in dir(pplgate) and 'torch' not in sys.modules; "
        "m = pplgate.Measurer; assert 'torch' in sys.modules and m.__module__ == 'pplgate.measure'; "
        "from pplgate import evaluate_perplexity, tokenize_canonical, load_canonical_text, PerplexityResult; "
        "print('ok')"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
    import pplgate

    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        pplgate.nothing_here  # noqa: B018


def test_the_plugin_imports_no_heavy_library_and_fp_rtn_never_import_autoawq(source, text_file) -> None:
    """Importing the plugin (pytest's collection) costs no torch/transformers; only an awq kind imports AutoAWQ."""
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([src, *sys.path]))
    code = (
        "import sys, pplgate.plugin\n"
        "heavy = [m for m in ('torch', 'transformers', 'awq', 'gguf') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "from pplgate.measure import Measurer\n"
        "from pplgate.models.source import ModelSource\n"
        f"m = Measurer(dataset={str(text_file)!r}, allow_noncanonical=True)\n"
        "for kind, params in (('fp32', {}), ('rtn', {'q_group_size': 32})):\n"
        f"    m.measure(ModelSource({source.path_or_id!r}), kind=kind, params=params, device='cpu', seqlen=64,"
        " max_windows=1)\n"
        "assert 'awq' not in sys.modules, 'awq imported'\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-2000:]


def test_a_fresh_model_is_a_private_copy_of_the_loaded_one(measurer, source) -> None:
    """Variants that change weights (RTN, AWQ) get a deep copy of the session's model, not a second load."""
    import torch

    shared = measurer.model(source, "fp32", "cpu")
    fresh = measurer.model(source, "fp32", "cpu", fresh=True)
    assert fresh is not shared
    for (name, a), (_, b) in zip(shared.state_dict().items(), fresh.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
        assert a.data_ptr() != b.data_ptr(), name
    with torch.no_grad():
        next(fresh.parameters()).add_(1.0)
    assert not torch.equal(next(fresh.parameters()), next(shared.parameters()))
    assert measurer.model(source, "fp32", "cpu") is shared


def test_an_overflowing_mean_nll_is_an_error_naming_the_worst_window(measurer, source, monkeypatch) -> None:
    """The gate measures through the Measurer: no raw OverflowError, the worst window named."""
    monkeypatch.setattr(inputs_mod, "load_model", lambda *a, **k: wrong_token_lm(50257, 800.0))
    with pytest.raises(PerplexityOverflowError, match=r"over 2 window\(s\) is 800 nats.*Worst window: 0") as info:
        measurer.measure(source, kind="fp32", params={}, device="cpu", **SHORT)
    assert info.value.n_windows == 2
