"""Protocol rules: one BOS at the start (tokenizer defaults), windows scored alone and unchanged,
mean of window means, partial runs, non-finite losses and invalid requests."""

from __future__ import annotations

import math

import pytest
import torch
from support import (
    random_ids,
    reference_window_nlls,
    synthetic_dataset,
    synthetic_tokens,
    uniform_lm,
)

from pplgate.errors import NonFiniteLossError, PerplexityOverflowError, ProtocolError
from pplgate.protocol.engine import evaluate_perplexity, model_max_positions
from pplgate.protocol.tokens import tokenize_canonical
from pplgate.protocol.windows import check_finite, make_windows, perplexity


def _evaluate(model, ids, seqlen, **kw):
    kw.setdefault("progress", False)
    return evaluate_perplexity(model, synthetic_tokens(ids), synthetic_dataset(), seqlen=seqlen, **kw)


# --- BOS handling with real tokenizers ------------------------------------------------------


def test_llama2_tokenizer_adds_one_bos_at_the_start_only(llama2_tokenizer, canonical_text) -> None:
    tok = tokenize_canonical(llama2_tokenizer, canonical_text.text)
    bos = llama2_tokenizer.bos_token_id
    assert tok.bos_added is True
    assert int(tok.ids[0]) == bos
    assert int((tok.ids == bos).sum()) == 1  # not once per window, not per row
    windows = make_windows(tok.ids, 2048)
    assert int((windows[1:, 0] == bos).sum()) == 0


def test_gpt2_tokenizer_adds_no_bos(gpt2_tokenizer, canonical_text) -> None:
    tok = tokenize_canonical(gpt2_tokenizer, canonical_text.text)
    assert tok.bos_added is False
    assert int(tok.ids[0]) != gpt2_tokenizer.bos_token_id
    assert tok.ids.dtype == torch.long and tok.ids.dim() == 1


def test_bos_added_detected_even_when_the_text_starts_with_a_bos(llama2_tokenizer, gpt2_tokenizer) -> None:
    # the tokenizer prepends its BOS in front of the text's own literal "<s>": it did add one
    tok = tokenize_canonical(llama2_tokenizer, "<s> hello world")
    assert tok.ids[:2].tolist() == [llama2_tokenizer.bos_token_id] * 2
    assert tok.bos_added is True
    # GPT-2 adds nothing, even when the text starts with its BOS/EOS string
    tok = tokenize_canonical(gpt2_tokenizer, "<|endoftext|> hello world")
    assert int(tok.ids[0]) == gpt2_tokenizer.bos_token_id
    assert tok.bos_added is False


def test_tokenizer_fingerprint_differs_between_tokenizers(gpt2_tokenizer, llama2_tokenizer) -> None:
    a = tokenize_canonical(gpt2_tokenizer, "hello world")
    b = tokenize_canonical(llama2_tokenizer, "hello world")
    again = tokenize_canonical(gpt2_tokenizer, "other text")
    assert a.tokenizer_sha256 != b.tokenizer_sha256
    assert a.tokenizer_sha256 == again.tokenizer_sha256  # depends on the tokenizer, not the text
    assert len(a.tokenizer_sha256) == 64


# --- windows go to the model alone and unmodified -----------------------------------------------


@pytest.mark.parametrize("batch_size", [1, 2, 5])
def test_each_window_is_fed_as_is_without_added_tokens(batch_size) -> None:
    model = uniform_lm(50)
    ids = random_ids(5 * 12 + 7, 50, seed=3)
    res = _evaluate(model, ids, 12, batch_size=batch_size)
    fed = torch.cat(model.seen)
    assert tuple(fed.shape) == (5, 12)  # no BOS prepended, no overlap/stride, tail not fed
    assert torch.equal(fed, ids[:60].view(5, 12))
    assert res.tail_tokens == 7


def test_mean_of_window_means_equals_token_weighted_mean(make_tiny_llama) -> None:
    model = make_tiny_llama(vocab=61, max_pos=64, seed=7)
    seqlen = 24
    ids = random_ids(6 * seqlen + 5, 61, seed=8)
    res = _evaluate(model, ids, seqlen)
    with torch.no_grad():
        logits = model(input_ids=make_windows(ids, seqlen)).logits.double()
    w = make_windows(ids, seqlen)
    token_nll = -torch.log_softmax(logits[:, :-1], -1).gather(2, w[:, 1:, None]).squeeze(2)
    token_weighted = float(token_nll.sum() / token_nll.numel())  # all windows full: same weights
    assert res.ppl == pytest.approx(math.exp(token_weighted), rel=1e-6)
    assert math.log(res.ppl) == pytest.approx(sum(res.window_nlls) / len(res.window_nlls), rel=1e-12)


def test_max_windows_marks_partial_and_keeps_total(make_tiny_llama) -> None:
    model = make_tiny_llama(vocab=61, max_pos=64, seed=9)
    ids = random_ids(6 * 20 + 3, 61, seed=10)
    full = _evaluate(model, ids, 20)
    part = _evaluate(model, ids, 20, max_windows=2)
    assert full.partial is False and full.n_windows == full.n_windows_total == 6
    assert part.partial is True
    assert part.n_windows == 2 and part.n_windows_total == 6
    assert part.window_nlls == pytest.approx(full.window_nlls[:2], rel=1e-6)
    assert part.ppl == pytest.approx(math.exp(sum(full.window_nlls[:2]) / 2), rel=1e-6)
    assert "PARTIAL" in part.summary() and "2/6 windows" in part.summary()
    not_partial = _evaluate(model, ids, 20, max_windows=6)
    assert not_partial.partial is False and not_partial.n_windows == 6


def test_max_windows_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_windows"):
        _evaluate(uniform_lm(10), random_ids(40, 10), 8, max_windows=0)


def test_result_records_protocol_fingerprint(make_tiny_llama) -> None:
    model = make_tiny_llama(vocab=61, max_pos=64, seed=9)
    ids = random_ids(3 * 16, 61)
    toks = synthetic_tokens(ids, bos_added=True)
    ds = synthetic_dataset("abc", canonical=False)
    res = evaluate_perplexity(model, toks, ds, seqlen=16, progress=False)
    assert (res.seqlen, res.n_tokens, res.bos_added, res.dtype, res.device) == (16, 48, True, "float32", "cpu")
    assert (res.dataset_sha256, res.dataset_source, res.canonical) == (ds.sha256, "synthetic", False)
    assert res.tokens_per_s > 0 and res.wall_time_s >= 0
    assert res.window_nlls == pytest.approx(reference_window_nlls(model, make_windows(ids, 16)), rel=1e-6)


# --- non-finite losses ----------------------------------------------------------------------


@pytest.mark.parametrize("batch_size", [1, 3])
def test_nan_weights_raise_naming_the_window(make_tiny_llama, batch_size) -> None:
    vocab, seqlen, poison = 61, 16, 60
    model = make_tiny_llama(vocab=vocab, max_pos=64, seed=4)
    with torch.no_grad():
        model.model.embed_tokens.weight[poison] = float("nan")
    ids = random_ids(5 * seqlen, vocab - 1, seed=5)  # never the poisoned token ...
    ids[2 * seqlen + 5] = poison  # ... except inside window 2
    _evaluate(model, ids[: 2 * seqlen], seqlen)  # windows 0-1 alone are fine
    with pytest.raises(NonFiniteLossError, match="window 2 ") as info:
        _evaluate(model, ids, seqlen, batch_size=batch_size)
    assert info.value.window_index == 2
    assert math.isnan(info.value.value)


def test_infinite_loss_raises() -> None:
    def fn(ids):
        logits = torch.zeros(*ids.shape, 8)
        logits[1, :, 0] = float("-inf")  # window 1 gives its token 0 no mass: NLL = inf
        return logits

    from support import LogitFnLM

    ids = torch.zeros(3 * 4, dtype=torch.long)
    with pytest.raises(NonFiniteLossError, match="window 1 ") as info:
        _evaluate(LogitFnLM(fn), ids, 4, batch_size=3)
    assert info.value.value == float("inf")


def test_check_finite_and_perplexity_reject_nan() -> None:
    check_finite([1.0, 2.0])
    with pytest.raises(NonFiniteLossError) as info:
        check_finite([1.0, float("nan")], offset=10)
    assert info.value.window_index == 11
    with pytest.raises(NonFiniteLossError):
        perplexity([1.0, float("inf")])


@pytest.mark.parametrize("batch_size", [1, 2])
def test_mean_nll_beyond_709_nats_is_an_error_naming_the_worst_window(batch_size) -> None:
    from support import wrong_token_lm

    ids = torch.arange(4).repeat_interleave(8)  # window w is token w: 4 windows of 8
    model = wrong_token_lm(16, 1000.0, by_first_token={1: 1500.0})
    with pytest.raises(PerplexityOverflowError, match=r"Worst window: 1 \(mean NLL 1500 nats") as info:
        evaluate_perplexity(model, synthetic_tokens(ids), synthetic_dataset(), seqlen=8, batch_size=batch_size)
    assert isinstance(info.value, NonFiniteLossError) and info.value.window_index == 1
    assert info.value.mean == pytest.approx(1125.0) and info.value.n_windows == 4
    assert "mean NLL over 4 window(s) is 1125 nats, above ln(float max) = 709.78" in str(info.value)


def test_a_running_overflow_is_shown_as_inf_and_a_finite_final_mean_is_the_result(capsys) -> None:
    from support import wrong_token_lm

    ids = torch.arange(4).repeat_interleave(8)
    model = wrong_token_lm(16, 1.0, by_first_token={0: 1000.0})  # window 0 alone overflows, the mean does not
    res = evaluate_perplexity(model, synthetic_tokens(ids), synthetic_dataset(), seqlen=8, progress=True)
    assert res.ppl == pytest.approx(math.exp(math.fsum(res.window_nlls) / 4)) and math.isfinite(res.ppl)
    assert res.window_nlls[0] == pytest.approx(1000.0)
    assert "ppl=inf" in capsys.readouterr().err.replace(" ", "")


# --- invalid requests -----------------------------------------------------------------------


def test_seqlen_beyond_max_positions_is_a_protocol_error_with_the_fix(make_tiny_llama) -> None:
    model = make_tiny_llama(vocab=61, max_pos=32, seed=1)
    assert model_max_positions(model) == 32
    with pytest.raises(ProtocolError, match="max_position_embeddings") as info:
        _evaluate(model, random_ids(200, 61), 64)
    assert "--seqlen 32" in str(info.value)
    assert _evaluate(model, random_ids(200, 61), 32).n_windows == 6  # at the limit it runs


def test_gpt2_n_positions_is_honoured(make_tiny_gpt2) -> None:
    model = make_tiny_gpt2(vocab=61, max_pos=16)
    assert model_max_positions(model) == 16
    with pytest.raises(ProtocolError, match="--seqlen 16"):
        _evaluate(model, random_ids(100, 61), 17)


def test_text_shorter_than_one_window_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="fewer than one window"):
        _evaluate(uniform_lm(10), random_ids(2047, 10), 2048)


def test_empty_window_list_perplexity_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="shorter than one window"):
        perplexity([])


def test_token_ids_beyond_the_models_vocabulary_are_a_protocol_error(make_tiny_llama) -> None:
    model = make_tiny_llama(vocab=61, max_pos=64, seed=1)
    ids = random_ids(64, 61)
    ids[40] = 70  # a tokenizer of another model
    with pytest.raises(ProtocolError, match=r"gives token id 70, but the model's vocabulary has 61 entries"):
        _evaluate(model, ids, 16)


class _Oom:
    """A LogitFnLM body that runs out of memory for batches of more than two windows."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def __call__(self, ids):
        if ids.shape[0] > 2:
            raise self.exc
        return torch.zeros(*ids.shape, 8)


@pytest.mark.parametrize(
    "exc",
    [
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"),
        RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: 1e12 bytes"),
        MemoryError(),
    ],
    ids=["cuda-oom", "cpu-alloc", "memory-error"],
)
def test_out_of_memory_names_the_batch_and_the_fix(exc) -> None:
    from support import LogitFnLM

    ids = torch.zeros(6 * 4, dtype=torch.long)
    assert _evaluate(LogitFnLM(_Oom(exc)), ids, 4, batch_size=2).n_windows == 6
    with pytest.raises(ProtocolError, match=r"out of memory scoring windows 0..3 \(4 per forward pass\) on cpu") as i:
        _evaluate(LogitFnLM(_Oom(exc)), ids, 4, batch_size=4)
    assert "Lower the batch size (--batch-size" in str(i.value) and i.value.__cause__ is exc


def test_other_runtime_errors_pass_through() -> None:
    from support import LogitFnLM

    with pytest.raises(RuntimeError, match="shape mismatch"):
        _evaluate(LogitFnLM(_Oom(RuntimeError("shape mismatch"))), torch.zeros(24, dtype=torch.long), 4, batch_size=4)
