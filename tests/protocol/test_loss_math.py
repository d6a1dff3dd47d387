"""Loss math: the engine's per-window NLLs and PPL against an independent float64 reference and
hand-computable models, on both the split-head path and the full-logits fallback."""

from __future__ import annotations

import math

import pytest
import torch
from support import (
    LogitFnLM,
    random_ids,
    reference_ppl,
    reference_window_nlls,
    synthetic_dataset,
    synthetic_tokens,
    uniform_lm,
)

from pplgate.protocol.engine import evaluate_perplexity, score_windows, split_head
from pplgate.protocol.windows import make_windows, perplexity, window_mean_nlls

REL = 1e-6


def _evaluate(model, ids, seqlen, **kw):
    return evaluate_perplexity(model, synthetic_tokens(ids), synthetic_dataset(), seqlen=seqlen, progress=False, **kw)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_engine_matches_float64_reference(arch, make_tiny_llama, make_tiny_gpt2) -> None:
    vocab, seqlen = 101, 48
    model = (make_tiny_llama if arch == "llama" else make_tiny_gpt2)(vocab=vocab, max_pos=64, seed=1)
    assert split_head(model) is not None  # the fast path is exercised
    ids = random_ids(5 * seqlen + 17, vocab, seed=2)
    res = _evaluate(model, ids, seqlen)
    ref = reference_window_nlls(model, make_windows(ids, seqlen))
    assert res.n_windows == 5 and len(res.window_nlls) == 5
    assert res.window_nlls == pytest.approx(ref, rel=REL)
    assert res.ppl == pytest.approx(reference_ppl(ref), rel=REL)
    # the model is far from uniform: the check would notice e.g. an off-by-one label shift
    assert abs(res.ppl - vocab) / vocab > 0.05


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_split_head_and_full_logits_paths_agree(arch, make_tiny_llama, make_tiny_gpt2) -> None:
    factory = make_tiny_llama if arch == "llama" else make_tiny_gpt2
    split_model = factory(vocab=97, max_pos=64, seed=3)
    full_model = factory(vocab=97, max_pos=64, seed=3)
    # a logit transform in the config forces the full-logits fallback (these classes ignore the key,
    # so both models compute the same function)
    full_model.config.final_logit_softcapping = 30.0
    body_head = split_head(split_model)
    assert body_head is not None
    assert body_head[0] is split_model.base_model and body_head[1] is split_model.get_output_embeddings()
    assert split_head(full_model) is None
    windows = make_windows(random_ids(4 * 40, 97, seed=4), 40)
    a = score_windows(split_model, windows, loss_chunk_tokens=13)
    b = score_windows(full_model, windows, loss_chunk_tokens=13)
    assert a == pytest.approx(b, rel=REL)
    assert a == pytest.approx(reference_window_nlls(split_model, windows), rel=REL)


def test_model_without_base_model_uses_full_logits(make_tiny_llama) -> None:
    inner = make_tiny_llama(vocab=53, max_pos=64, seed=5)
    wrapper = LogitFnLM(lambda ids: inner(input_ids=ids).logits, max_pos=64)
    assert split_head(wrapper) is None
    ids = random_ids(3 * 32, 53, seed=6)
    via_wrapper = _evaluate(wrapper, ids, 32)
    direct = _evaluate(inner, ids, 32)
    assert via_wrapper.window_nlls == pytest.approx(direct.window_nlls, rel=REL)


@pytest.mark.parametrize("vocab", [2, 10, 1000])
def test_uniform_logits_give_ppl_equal_to_vocab(vocab: int) -> None:
    res = _evaluate(uniform_lm(vocab), random_ids(3 * 16 + 5, vocab), 16)
    assert res.ppl == pytest.approx(vocab, rel=1e-6)
    assert res.window_nlls == pytest.approx([math.log(vocab)] * 3, rel=1e-6)


# A fixed bigram table over 3 tokens: P(1|0)=1/2, P(0|1)=1/8, P(2|0)=1/4 ...
_P = torch.tensor(
    [
        [1 / 4, 1 / 2, 1 / 4],
        [1 / 8, 5 / 8, 2 / 8],
        [1 / 3, 1 / 3, 1 / 3],
    ],
    dtype=torch.float64,
)
_LOGP = _P.log().float()


class _OneHotBody(torch.nn.Module):
    def forward(self, input_ids, use_cache=False, **_):
        from types import SimpleNamespace

        return SimpleNamespace(last_hidden_state=torch.nn.functional.one_hot(input_ids, 3).float())


class BigramLM(torch.nn.Module):
    """logits[t] = log P[token_t, :]; with ``split`` it exposes body/head like an HF model."""

    def __init__(self, softcap: float | None = None) -> None:
        super().__init__()
        from types import SimpleNamespace

        self.config = SimpleNamespace(max_position_embeddings=None, final_logit_softcapping=softcap)
        self.model = _OneHotBody()
        self.lm_head = torch.nn.Linear(3, 3, bias=False)
        with torch.no_grad():
            self.lm_head.weight.copy_(_LOGP.T)  # onehot(prev) @ W.T = logP[prev]

    @property
    def base_model(self):
        return self.model

    def get_output_embeddings(self):
        return self.lm_head

    def forward(self, input_ids, use_cache=False, **_):
        from types import SimpleNamespace

        return SimpleNamespace(logits=self.lm_head(self.model(input_ids).last_hidden_state))


@pytest.mark.parametrize("softcap", [None, 50.0], ids=["split-head", "full-logits"])
def test_bigram_table_gives_hand_computed_ppl(softcap) -> None:
    model = BigramLM(softcap)
    assert (split_head(model) is None) == (softcap is not None)
    # window 0: 0->1 (1/2), 1->0 (1/8), 0->1 (1/2): mean NLL = (1+3+1)/3 ln2
    # window 1: 2->2 (1/3), 2->0 (1/3), 0->2 (1/4): mean NLL = (2 ln3 + 2 ln2)/3
    # tail [1, 1] dropped
    ids = torch.tensor([0, 1, 0, 1, 2, 2, 0, 2, 1, 1])
    res = _evaluate(model, ids, 4, loss_chunk_tokens=2)
    w0 = 5 / 3 * math.log(2)
    w1 = (2 * math.log(3) + 2 * math.log(2)) / 3
    assert res.window_nlls == pytest.approx([w0, w1], rel=1e-6)
    assert res.ppl == pytest.approx(math.exp((w0 + w1) / 2), rel=1e-6)
    assert res.ppl == pytest.approx((2 ** (5 / 3) * (36 ** (1 / 3))) ** 0.5, rel=1e-6)
    assert res.tail_tokens == 2 and res.n_windows == 2


def test_window_mean_nlls_with_head_matches_reference() -> None:
    torch.manual_seed(0)
    b, length, hidden, vocab = 3, 11, 8, 29
    states = torch.randn(b, length, hidden)
    head = torch.nn.Linear(hidden, vocab)
    tokens = torch.randint(0, vocab, (b, length))
    got = window_mean_nlls(states, tokens, head, chunk_tokens=4)
    assert got.dtype == torch.float64
    logp = torch.log_softmax(head(states).double()[:, :-1], -1)
    ref = -logp.gather(2, tokens[:, 1:, None]).squeeze(2).mean(1)
    assert torch.allclose(got, ref, rtol=1e-6, atol=0)


def test_low_precision_logits_are_upcast_before_the_loss() -> None:
    torch.manual_seed(0)
    logits = (torch.randn(2, 64, 500) * 8).to(torch.bfloat16)
    tokens = torch.randint(0, 500, (2, 64))
    got = window_mean_nlls(logits, tokens, None, chunk_tokens=50)
    ref_logp = torch.log_softmax(logits.double()[:, :-1], -1)
    ref = -ref_logp.gather(2, tokens[:, 1:, None]).squeeze(2).mean(1)
    # fp32 accumulation: ~1e-7; a bf16 log_softmax would be off by ~1e-2
    assert torch.allclose(got, ref, rtol=1e-6, atol=0)


def test_perplexity_is_exp_of_mean_of_window_means() -> None:
    assert perplexity([math.log(2), math.log(8)]) == pytest.approx(4.0, rel=1e-12)
    assert perplexity([1.5]) == pytest.approx(math.exp(1.5), rel=1e-12)
