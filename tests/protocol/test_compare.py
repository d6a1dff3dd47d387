"""The comparison engine: KLD / top-1 / Δp against an independent float64 reference, a closed form,
identical models, batch and chunk invariance, the shared reference pass and bad input."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from support import LogitFnLM, random_ids, synthetic_dataset, synthetic_tokens, tiny_gpt2, tiny_llama

from pplgate.errors import NonFiniteLogitsError, ProtocolError
from pplgate.protocol.compare import evaluate_comparison, evaluate_comparisons
from pplgate.protocol.compare_result import ComparisonResult
from pplgate.protocol.divergence import COMPARE_BYTES_PER_LOGIT, compare_chunk_tokens, compare_windows
from pplgate.protocol.engine import evaluate_perplexity, score_windows
from pplgate.protocol.kld_stats import PERCENTS, percent_key
from pplgate.protocol.windows import make_windows

SEQLEN = 40
N_WINDOWS = 7
VOCAB = 211


def _compare(ref, model, ids, seqlen=SEQLEN, **kw) -> ComparisonResult:
    kw.setdefault("progress", False)
    return evaluate_comparison(ref, model, synthetic_tokens(ids), synthetic_dataset(), seqlen=seqlen, **kw)


def perturbed(model, scale: float, seed: int):
    """A copy of ``model`` with Gaussian noise of ``scale`` (relative to each tensor's sd) on every weight."""
    out = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in out.parameters():
            p.add_(torch.randn(p.shape, generator=g) * p.std() * scale)
    return out


def reference_compare(ref, model, windows: torch.Tensor) -> dict[str, list]:
    """Independent float64 reference: full logits of each model, one window at a time, float64 softmax."""
    out: dict[str, list] = {"kld": [], "top1": [], "dp": [], "dp_sq": [], "nll_r": [], "nll_m": [], "tokens": []}
    with torch.no_grad():
        for w in windows:
            lr = ref(input_ids=w[None]).logits[0, :-1].double()
            lm = model(input_ids=w[None]).logits[0, :-1].double()
            logp, logq = torch.log_softmax(lr, -1), torch.log_softmax(lm, -1)
            p, q = logp.exp(), logq.exp()
            kld = (p * (logp - logq)).sum(-1)
            y = w[1:, None]
            dp = (q.gather(1, y) - p.gather(1, y)).squeeze(1)
            out["kld"].append(float(kld.mean()))
            out["top1"].append(float((lr.argmax(-1) == lm.argmax(-1)).double().mean()))
            out["dp"].append(float(dp.mean()))
            out["dp_sq"].append(float((dp * dp).mean()))
            out["nll_r"].append(float(-logp.gather(1, y).mean()))
            out["nll_m"].append(float(-logq.gather(1, y).mean()))
            out["tokens"].extend(kld.tolist())
    return out


@pytest.fixture(scope="module")
def llama_pair():
    ref = tiny_llama(vocab=VOCAB, max_pos=64, seed=11)
    ids = random_ids(N_WINDOWS * SEQLEN + 9, VOCAB, seed=12)
    return ref, perturbed(ref, 0.3, seed=5), ids


# --- identical models -------------------------------------------------------------------------


@pytest.mark.parametrize("same_object", [True, False])
def test_identical_models_give_exactly_zero_and_full_agreement(llama_pair, same_object) -> None:
    ref, _, ids = llama_pair
    other = ref if same_object else copy.deepcopy(ref)
    r = _compare(ref, other, ids, batch_size=3)
    assert r.window_klds == [0.0] * N_WINDOWS and r.mean_kld == 0.0 and r.max_kld == 0.0
    assert r.window_top1 == [1.0] * N_WINDOWS and r.top1_agreement == 1.0
    assert r.mean_delta_p == 0.0 and r.rms_delta_p == 0.0
    assert r.kld_percentiles == {percent_key(p): 0.0 for p in PERCENTS}
    assert r.ln_ppl_ratio == 0.0 and r.ppl_model == r.ppl_reference


def test_nearly_identical_models_never_give_a_negative_kld(llama_pair) -> None:
    """fp32 rounding of near-identical rows made per-position KLDs of ~-1e-8 (window means -8e-9), which a
    baseline file then refused as not >= 0; KL divergence is never negative."""
    ref, _, ids = llama_pair
    for scale in (1e-7, 1e-6):
        r = _compare(ref, perturbed(ref, scale, seed=5), ids, batch_size=3)
        assert min(r.window_klds) >= 0.0 and r.mean_kld >= 0.0 and min(r.kld_percentiles.values()) >= 0.0


# --- closed form ------------------------------------------------------------------------------


def test_a_known_shift_on_one_token_gives_the_closed_form() -> None:
    """q = softmax(l + δ·e_k) against p = softmax(l): KLD = ln(1 - p_k + p_k e^δ) - δ p_k at every position,
    top-1 flips exactly where δ makes k the argmax, Δp in closed form too."""
    vocab, k = 13, 5
    base = torch.linspace(-1.0, 2.0, vocab)  # argmax p = vocab - 1
    ids = random_ids(3 * 16, vocab, seed=4)

    def shifted(delta_of_window):
        def fn(t: torch.Tensor) -> torch.Tensor:
            out = base.expand(*t.shape, vocab).clone()
            out[..., k] += delta_of_window(t)[:, None]
            return out

        return fn

    deltas = {0: 0.7, 1: 4.0, 2: -2.0}  # per window, found by its first token
    starts = make_windows(ids, 16)[:, 0].tolist()
    by_start = {s: deltas[i] for i, s in enumerate(starts)}
    assert len(by_start) == 3, "window starts must differ for this test"
    model = LogitFnLM(shifted(lambda t: torch.tensor([by_start[int(s)] for s in t[:, 0]])))
    ref = LogitFnLM(lambda t: base.expand(*t.shape, vocab).clone())
    r = _compare(ref, model, ids, seqlen=16, batch_size=2)

    lb = base.double()
    p = torch.softmax(lb, 0)
    pk = float(p[k])
    windows = make_windows(ids, 16)
    for i, w in enumerate(windows):
        d = deltas[i]
        # fp32 log-softmax rounds each log-probability by ~1e-7 nats: that is the absolute floor of the KLD
        assert r.window_klds[i] == pytest.approx(math.log(1 - pk + pk * math.exp(d)) - d * pk, rel=1e-6, abs=2e-7)
        top1 = 0.0 if float(lb[k]) + d > float(lb.max()) else 1.0
        assert r.window_top1[i] == top1
        q = torch.softmax(lb + d * torch.nn.functional.one_hot(torch.tensor(k), vocab).double(), 0)
        dp = [float(q[y] - p[y]) for y in w[1:].tolist()]
        assert r.window_delta_p[i] == pytest.approx(sum(dp) / len(dp), rel=1e-6, abs=2e-8)  # fp32 probabilities
    assert r.top1_agreement == pytest.approx(2 / 3)


# --- independent float64 reference ------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: (tiny_llama(vocab=VOCAB, max_pos=64, seed=11), 0.3), id="llama-perturbed"),
        pytest.param(lambda: (tiny_llama(vocab=VOCAB, max_pos=64, seed=11), None), id="llama-other-seed"),
        pytest.param(lambda: (tiny_gpt2(vocab=VOCAB, max_pos=64, seed=3), 0.2), id="gpt2-perturbed"),
    ],
)
def test_engine_equals_an_independent_float64_reference(make) -> None:
    ref, scale = make()
    model = perturbed(ref, scale, seed=9) if scale else tiny_llama(vocab=VOCAB, max_pos=64, seed=12)
    ids = random_ids(N_WINDOWS * SEQLEN + 3, VOCAB, seed=13)
    r = _compare(ref, model, ids, batch_size=2)
    want = reference_compare(ref, model, make_windows(ids, SEQLEN))
    assert min(want["kld"]) > 1e-3  # the pair really differs
    assert r.window_klds == pytest.approx(want["kld"], rel=1e-6)
    assert r.window_top1 == want["top1"]
    assert r.window_delta_p == pytest.approx(want["dp"], rel=1e-6, abs=1e-8)
    assert r.window_nlls_reference == pytest.approx(want["nll_r"], rel=1e-6)
    assert r.window_nlls_model == pytest.approx(want["nll_m"], rel=1e-6)
    assert r.rms_delta_p == pytest.approx(math.sqrt(sum(want["dp_sq"]) / N_WINDOWS), rel=1e-6)
    assert r.mean_kld == pytest.approx(sum(want["kld"]) / N_WINDOWS, rel=1e-6)
    tokens = sorted(want["tokens"])
    assert r.max_kld == pytest.approx(tokens[-1], rel=1e-5)
    for p in PERCENTS:  # nearest rank, within the sketch's 0.1% (plus fp32 noise)
        exact = tokens[max(1, math.ceil(p / 100 * len(tokens))) - 1]
        assert r.kld_percentiles[percent_key(p)] == pytest.approx(exact, rel=r.kld_percentile_rel_error + 1e-5)
    assert r.n_positions == N_WINDOWS * (SEQLEN - 1) == len(tokens)


# --- the shared reference pass ----------------------------------------------------------------


def test_both_perplexities_equal_the_plain_engines(llama_pair) -> None:
    ref, model, ids = llama_pair
    toks, data = synthetic_tokens(ids), synthetic_dataset()
    r = _compare(ref, model, ids, batch_size=3)
    plain_ref = evaluate_perplexity(ref, toks, data, seqlen=SEQLEN, batch_size=3, progress=False)
    plain_model = evaluate_perplexity(model, toks, data, seqlen=SEQLEN, batch_size=3, progress=False)
    assert r.window_nlls_reference == plain_ref.window_nlls  # same chunks: bit for bit on CPU
    assert r.window_nlls_model == plain_model.window_nlls
    assert r.ppl_reference == plain_ref.ppl and r.ppl_model == plain_model.ppl
    assert r.ln_ppl_ratio == pytest.approx(math.log(r.ppl_model / r.ppl_reference), rel=1e-12)
    diffs = [m - x for m, x in zip(r.window_nlls_model, r.window_nlls_reference, strict=True)]
    mean = sum(diffs) / len(diffs)
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1))
    assert r.ln_ppl_ratio_std_err == pytest.approx(sd / math.sqrt(len(diffs)), rel=1e-9)
    pr, pm = r.perplexity_results()
    assert (pr.ppl, pm.ppl, pr.window_nlls, pm.n_windows) == (r.ppl_reference, r.ppl_model, plain_ref.window_nlls, 7)


def test_several_models_in_one_pass_equal_separate_passes(llama_pair) -> None:
    ref, model, ids = llama_pair
    other = perturbed(ref, 0.1, seed=6)
    both = evaluate_comparisons(
        ref, [model, other], synthetic_tokens(ids), synthetic_dataset(), seqlen=SEQLEN, batch_size=2, progress=False
    )
    for got, m in zip(both, (model, other), strict=True):
        alone = _compare(ref, m, ids, batch_size=2)
        for name in ("window_klds", "window_top1", "window_delta_p", "window_nlls_model", "kld_percentiles"):
            assert getattr(got, name) == getattr(alone, name), name
    assert both[0].window_nlls_reference == both[1].window_nlls_reference
    assert both[1].mean_kld < both[0].mean_kld  # less noise, closer to the reference


# --- batching and chunk size ------------------------------------------------------------------


@pytest.fixture(scope="module")
def batch1(llama_pair):
    ref, model, ids = llama_pair
    return _compare(ref, model, ids, batch_size=1, chunk_tokens=2048)


@pytest.mark.parametrize("batch_size", [2, 3, 7, 16])
@pytest.mark.parametrize("chunk", [1, 17, SEQLEN - 1, 100])
def test_batch_size_and_chunk_size_do_not_change_the_result(llama_pair, batch1, batch_size, chunk) -> None:
    ref, model, ids = llama_pair
    r = _compare(ref, model, ids, batch_size=batch_size, chunk_tokens=chunk)
    assert r.window_klds == pytest.approx(batch1.window_klds, rel=1e-6)
    assert r.window_top1 == batch1.window_top1
    assert r.window_delta_p == pytest.approx(batch1.window_delta_p, rel=1e-6, abs=1e-8)
    assert r.window_nlls_model == pytest.approx(batch1.window_nlls_model, rel=1e-6)
    assert r.max_kld == pytest.approx(batch1.max_kld, rel=1e-6)
    for key, value in batch1.kld_percentiles.items():  # the same bucket, unless fp32 noise sits on an edge
        assert r.kld_percentiles[key] == pytest.approx(value, rel=2 * batch1.kld_percentile_rel_error)


class RecordingHead(torch.nn.Module):
    def __init__(self, head: torch.nn.Module) -> None:
        super().__init__()
        self.head, self.rows = head, []
        self.out_features = head.out_features

    def forward(self, x):
        self.rows.append(x.shape[0])
        return self.head(x)


def test_logits_are_made_at_most_one_chunk_at_a_time(llama_pair) -> None:
    ref, model, ids = llama_pair
    ref, model = copy.deepcopy(ref), copy.deepcopy(model)
    heads = [RecordingHead(m.lm_head) for m in (ref, model)]
    ref.lm_head, model.lm_head = heads
    _compare(ref, model, ids, batch_size=7, chunk_tokens=50)
    for h in heads:
        assert max(h.rows) == 50 and sum(h.rows) == N_WINDOWS * (SEQLEN - 1)
    assert compare_chunk_tokens(49152) == 256 * 2**20 // (COMPARE_BYTES_PER_LOGIT * 49152) == 341
    assert compare_chunk_tokens(10**9) == 64


# --- bad input --------------------------------------------------------------------------------


def test_different_vocabulary_sizes_are_an_error_before_any_forward() -> None:
    ref = LogitFnLM(lambda t: torch.zeros(*t.shape, 50), vocab_size=50)
    model = LogitFnLM(lambda t: torch.zeros(*t.shape, 60), vocab_size=60)
    with pytest.raises(ProtocolError, match=r"50 logits per position and the model \(m\) 60.*one vocabulary"):
        _compare(ref, model, random_ids(64, 50), seqlen=16, label="m")
    assert ref.seen == [] and model.seen == []


def test_different_logit_widths_are_an_error_even_when_the_configs_do_not_say() -> None:
    ref = LogitFnLM(lambda t: torch.zeros(*t.shape, 50))
    model = LogitFnLM(lambda t: torch.zeros(*t.shape, 51))
    with pytest.raises(ProtocolError, match="one vocabulary"):
        _compare(ref, model, random_ids(64, 50), seqlen=16)


def _poisoned(vocab: int, bad_window_first_token: int, value: float, position: int) -> LogitFnLM:
    def fn(t: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(*t.shape, vocab)
        out[..., 0] = torch.arange(t.shape[1], dtype=torch.float32) * 0.01
        out[t[:, 0] == bad_window_first_token, position, 3] = value
        return out

    return LogitFnLM(fn)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("which", ["reference", "model"])
def test_nan_or_inf_logits_name_the_window_the_model_and_the_position(which, value) -> None:
    vocab, seqlen = 20, 16
    windows = make_windows(random_ids(5 * seqlen, vocab, seed=1), seqlen).clone()
    windows[:, 0] = torch.tensor([1, 2, 3, 4, 5])  # window 3 starts with token 4
    clean = _poisoned(vocab, -1, 0.0, 0)
    bad = _poisoned(vocab, 4, value, 6)
    ref, model = (bad, clean) if which == "reference" else (clean, bad)
    with pytest.raises(NonFiniteLogitsError) as info:
        _compare(ref, model, windows.flatten(), seqlen=seqlen, batch_size=2, label="rtn", reference_label="fp32")
    err = info.value
    assert (err.window_index, err.which, err.position) == (3, which, 6)
    assert f"window 3: the {which} ({'fp32' if which == 'reference' else 'rtn'})" in str(err)


def test_no_model_and_bad_batch_size_are_errors(llama_pair) -> None:
    ref, model, ids = llama_pair
    windows = make_windows(ids, SEQLEN)
    with pytest.raises(ValueError, match="at least one model"):
        compare_windows(ref, [], windows)
    with pytest.raises(ValueError, match="batch_size"):
        compare_windows(ref, [model], windows, batch_size=0)


# --- the result object ------------------------------------------------------------------------


def test_result_round_trips_through_json_and_has_the_issue_fields(llama_pair, tmp_path) -> None:
    import json

    ref, model, ids = llama_pair
    r = _compare(ref, model, ids, batch_size=4, max_windows=5)
    data = json.loads(r.to_json(tmp_path / "c.json"))
    for key in (
        "mean_kld",
        "top1_agreement",
        "mean_delta_p",
        "rms_delta_p",
        "kld_percentiles",
        "ppl_reference",
        "ppl_model",
        "ln_ppl_ratio",
        "window_klds",
        "window_top1",
        "n_windows",
        "n_tokens",
        "dataset_sha256",
        "tokenizer_sha256",
        "seqlen",
        "partial",
    ):
        assert key in data, key
    assert list(data["kld_percentiles"]) == ["99.9", "99", "95", "90", "50", "10", "5", "1"]
    assert data["n_windows"] == 5 and data["partial"] is True and data["n_windows_total"] == N_WINDOWS
    assert ComparisonResult.from_dict(data) == r
    stats = r.summary_stats()
    assert "window_klds" not in stats and stats["mean_kld"] == r.mean_kld and "kld_percentiles" in stats
    assert "mean_kld=" in r.summary() and "ppl_reference=" in r.summary()
    assert score_windows(ref, make_windows(ids, SEQLEN)[:5], batch_size=4) == r.window_nlls_reference


def test_a_model_without_a_split_head_against_one_with_it(llama_pair) -> None:
    """The full-logits path (softcapping models) beside the chunked-head path: per-window chunks for both."""
    ref, model, ids = llama_pair
    full = LogitFnLM(lambda t: model(input_ids=t).logits, vocab_size=VOCAB)
    r = _compare(ref, full, ids, batch_size=3, chunk_tokens=17)
    want = reference_compare(ref, model, make_windows(ids, SEQLEN))
    assert r.window_klds == pytest.approx(want["kld"], rel=1e-6)
    assert r.window_top1 == want["top1"]
    assert r.window_nlls_model == pytest.approx(want["nll_m"], rel=1e-6)


def test_each_model_of_a_pass_is_timed_on_its_own_forwards() -> None:
    """A model that sleeps 50 ms per forward: its own forward time shows it, the other models' do not, and
    the PPL results of the pass carry each model's own tokens/s (the pass's wall time beside them)."""
    import time

    vocab = 16

    def slow(ids: torch.Tensor) -> torch.Tensor:
        time.sleep(0.05)
        return torch.zeros(*ids.shape, vocab)

    ids = random_ids(4 * 32 + 1, vocab, seed=2)
    ref = LogitFnLM(lambda x: torch.zeros(*x.shape, vocab))
    models = [copy.deepcopy(ref), LogitFnLM(slow)]
    results = evaluate_comparisons(
        ref, models, synthetic_tokens(ids), synthetic_dataset(), seqlen=32, batch_size=1, progress=False
    )
    quick, sleepy = results
    assert sleepy.forward_time_s >= 4 * 0.05 > 10 * quick.forward_time_s
    assert quick.forward_time_s_reference == sleepy.forward_time_s_reference < 0.05
    assert quick.wall_time_s == sleepy.wall_time_s >= sleepy.forward_time_s  # the pass: everything
    ref_ppl, sleepy_ppl = sleepy.perplexity_results()
    assert sleepy_ppl.wall_time_s == sleepy.forward_time_s and ref_ppl.wall_time_s == sleepy.forward_time_s_reference
    assert 320 < sleepy_ppl.tokens_per_s == sleepy.forward_tokens_per_s <= 32 / 0.05  # 32 tokens per >= 50 ms
    assert sleepy_ppl.extra == {"from_comparison": True, "pass_wall_time_s": sleepy.wall_time_s}
    assert not any(k.startswith("forward_") for k in sleepy.summary_stats())  # no quantity a KLD rule reads


def test_the_forward_clock_leaves_the_warm_up_batch_out_of_the_throughput() -> None:
    import time

    from pplgate.protocol.divergence import ForwardClock

    clock = ForwardClock(2, torch.device("cpu"))
    for pause in (0.3, 0.02, 0.02):  # the first batch: one-time costs (compilation, autotuning)
        with clock.timing(1):
            time.sleep(pause)
        clock.settle(100)
    assert clock.seconds[1] >= 0.34 and clock.seconds[0] < 0.01
    assert 100 / 0.03 < clock.steady_tokens_per_s(1) <= 100 / 0.02  # 200 tokens in ~0.04 s, not 300 in 0.34
    single = ForwardClock(1, torch.device("cpu"))
    with single.timing(0):
        time.sleep(0.02)
    single.settle(10)
    assert single.steady_tokens_per_s(0) == pytest.approx(10 / single.seconds[0])  # one batch: that batch
