"""``Measurer.compare``: one pass gives the comparison and both models' own measurements, which the session
keeps (a later ``measure`` of either request runs nothing), and the fingerprints ``measure`` would record."""

from __future__ import annotations

import pytest
from support import save_tiny_llama, write_jsonl

import pplgate.measure as measure_mod
from pplgate.measure import Measurer
from pplgate.models.source import ModelSource

TEXT = ["The quick brown fox jumps over the lazy dog near the bank of the river. " * 30] * 4
SHORT = dict(seqlen=64, max_windows=2, batch_size=2)


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> ModelSource:
    return ModelSource(str(save_tiny_llama(tmp_path_factory.mktemp("mc") / "tiny-llama", hidden=64, inter=128)))


@pytest.fixture
def measurer(tmp_path) -> Measurer:
    text = write_jsonl(tmp_path / "text.jsonl", TEXT)
    return Measurer(dataset=str(text), allow_noncanonical=True, cache_mode="off")


def test_compare_records_both_measurements_for_the_session(measurer, source, monkeypatch) -> None:
    rtn = {"w_bit": 4, "q_group_size": 64}
    c = measurer.compare(source, source, kind="rtn", params=rtn, reference_kind="fp32", device="cpu", **SHORT)
    assert c.result.mean_kld > 0 and c.result.ppl_reference == c.reference.result.ppl
    assert c.model.result.ppl == c.result.ppl_model and c.model.origin == "quantized"
    assert c.model.fingerprint["variant"]["kind"] == "rtn" and c.reference.fingerprint["variant"]["kind"] == "fp32"

    def no_second_pass(*a, **k):
        raise AssertionError("measure() scored again what compare() already measured")

    monkeypatch.setattr(measure_mod, "evaluate_perplexity", no_second_pass)
    assert measurer.measure(source, kind="fp32", params={}, device="cpu", **SHORT) is c.reference
    assert measurer.measure(source, kind="rtn", params=rtn, device="cpu", **SHORT) is c.model


def test_compare_fingerprints_equal_what_measure_records(measurer, source) -> None:
    c = measurer.compare(source, source, kind="fp32", params={}, reference_kind="fp32", device="cpu", **SHORT)
    fresh = Measurer(dataset=measurer.dataset, allow_noncanonical=True, cache_mode="off")
    m = fresh.measure(source, kind="fp32", params={}, device="cpu", **SHORT)
    assert c.reference.fingerprint == m.fingerprint
    assert c.reference.result.window_nlls == m.result.window_nlls
    assert c.result.mean_kld == 0.0 and c.result.top1_agreement == 1.0


def test_compare_many_shares_one_reference_pass(measurer, source, monkeypatch) -> None:
    import pplgate.protocol.compare as compare_mod

    calls = []
    real = compare_mod.compare_windows

    def counted(ref, models, *a, **k):
        calls.append(len(models))
        return real(ref, models, *a, **k)

    monkeypatch.setattr(compare_mod, "compare_windows", counted)
    rtn64, rtn32 = {"w_bit": 4, "q_group_size": 64}, {"w_bit": 4, "q_group_size": 32}
    many = measurer.compare_many(
        source, [(source, "rtn", rtn64), (source, "rtn", rtn32)], reference_kind="fp32", device="cpu", **SHORT
    )
    assert calls == [2]  # one pass: the reference's forward once for both
    assert many[0].reference is many[1].reference
    assert many[0].result.window_nlls_reference == many[1].result.window_nlls_reference
    alone = Measurer(dataset=measurer.dataset, allow_noncanonical=True, cache_mode="off").compare(
        source, source, kind="rtn", params=rtn32, reference_kind="fp32", device="cpu", **SHORT
    )
    assert alone.result.window_klds == many[1].result.window_klds
    assert many[1].result.mean_kld < many[0].result.mean_kld  # smaller groups, closer to fp32


def test_pass_records_carry_phases_caches_and_the_pass_time(measurer, source) -> None:
    """A measurement from a comparison pass records what a plain one does: the four phases (the
    tokenization on the reference, which tokenized first), the caches, and the pass's own wall time."""
    from pplgate.measure import PHASES

    rtn = {"q_group_size": 32}
    c = measurer.compare(source, source, kind="rtn", params=rtn, reference_kind="fp32", device="cpu", **SHORT)
    for m in (c.reference, c.model):
        assert list(m.phases) == list(PHASES) and m.phases["evaluate_s"] == m.result.wall_time_s
        assert m.extra["caches"] == {"token_cache": "off"}
        assert m.extra["pass_wall_time_s"] == round(c.result.wall_time_s, 2)
        assert m.result.wall_time_s < c.result.wall_time_s  # its own forwards, not the whole pass
    assert c.reference.phases["tokenize_s"] > 0 and c.model.phases["tokenize_s"] == 0


def test_a_comparison_records_the_per_module_profile_and_its_cost(measurer, source) -> None:
    """Each comparison carries the model's per-module output error vs the reference on the first 128 tokens,
    and ``layers_s`` (the reference's own measurement none); RTN with smaller groups errs less in every module."""
    rtn64, rtn32 = {"w_bit": 4, "q_group_size": 64}, {"w_bit": 4, "q_group_size": 32}
    many = measurer.compare_many(
        source, [(source, "rtn", rtn64), (source, "rtn", rtn32)], reference_kind="fp32", device="cpu", **SHORT
    )
    assert "layers_s" not in many[0].reference.extra
    coarse, fine = many[0].layers, many[1].layers
    assert set(coarse) == set(fine) and "layers.1.mlp.down_proj" in coarse and "layers.0.self_attn.q_proj" in coarse
    assert all(0 < fine[k] < coarse[k] < 1 for k in coarse)
    assert 0 < many[0].layers_info["layers_s"] < 5 and "layers_unavailable" not in many[0].layers_info


def test_a_layout_without_decoder_layers_records_why_and_still_measures() -> None:
    """A model the profile finds nothing in: no profile, the reason in the provenance, never an error."""
    import torch
    from support import uniform_lm

    ids = torch.arange(200)
    layers, info = measure_mod._layers(uniform_lm(300), uniform_lm(300), ids)
    assert layers is None and "without named decoder layers" in info["layers_unavailable"] and info["layers_s"] >= 0
    layers, info = measure_mod._layers(uniform_lm(300), None, ids)  # a profile that raises
    assert layers is None and info == {"layers_unavailable": info["layers_unavailable"]}


def test_the_profile_is_the_comparison_s_even_when_the_model_was_measured_before(measurer, source) -> None:
    """A request measured alone first (the session keeps that measurement) and then compared still gets the
    per-module profile against this pass's reference: it rides on the comparison, not the shared measurement."""
    rtn = {"w_bit": 4, "q_group_size": 64}
    alone = measurer.measure(source, kind="rtn", params=rtn, device="cpu", **SHORT)
    c = measurer.compare(source, source, kind="rtn", params=rtn, reference_kind="fp32", device="cpu", **SHORT)
    assert c.model is alone  # the session's measurement of the request, kept
    assert c.layers and "layers.0.self_attn.q_proj" in c.layers and "layers_s" in c.layers_info
