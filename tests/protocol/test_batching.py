"""Batching and the chunked loss: same numbers for any batch size / chunk size, and the head never
produces more than ``loss_chunk_tokens`` rows of logits at once (memory bounded as batch grows)."""

from __future__ import annotations

import pytest
import torch
from support import random_ids, synthetic_dataset, synthetic_tokens

from pplgate.protocol.engine import evaluate_perplexity, score_windows, split_head
from pplgate.protocol.windows import make_windows

SEQLEN = 40
N_WINDOWS = 7


@pytest.fixture(scope="module")
def llama_and_windows():
    from support import tiny_llama

    model = tiny_llama(vocab=211, max_pos=64, seed=11)
    return model, make_windows(random_ids(N_WINDOWS * SEQLEN + 9, 211, seed=12), SEQLEN)


@pytest.fixture(scope="module")
def batch1_nlls(llama_and_windows):
    model, windows = llama_and_windows
    return score_windows(model, windows, batch_size=1, loss_chunk_tokens=2048)


@pytest.mark.parametrize("batch_size", [2, 3, 4, 7, 16])
@pytest.mark.parametrize("chunk", [1, 17, SEQLEN - 1, 100, 2048])
def test_batched_equals_batch_one(llama_and_windows, batch1_nlls, batch_size, chunk) -> None:
    model, windows = llama_and_windows
    got = score_windows(model, windows, batch_size=batch_size, loss_chunk_tokens=chunk)
    assert len(got) == N_WINDOWS
    assert got == pytest.approx(batch1_nlls, rel=1e-5)


def test_evaluate_ppl_independent_of_batch_size(llama_and_windows) -> None:
    model, windows = llama_and_windows
    toks = synthetic_tokens(windows.flatten())
    results = [
        evaluate_perplexity(model, toks, synthetic_dataset(), seqlen=SEQLEN, batch_size=b, progress=False)
        for b in (1, 3, 8)
    ]
    assert results[0].batch_size == 1 and results[2].batch_size == 8
    for r in results[1:]:
        assert r.ppl == pytest.approx(results[0].ppl, rel=1e-5)
        assert r.n_windows == N_WINDOWS


def test_batch_size_must_be_positive(llama_and_windows) -> None:
    model, windows = llama_and_windows
    with pytest.raises(ValueError, match="batch_size"):
        score_windows(model, windows, batch_size=0)


class RecordingHead(torch.nn.Module):
    """Wraps the real lm_head and records the shape of every logits tensor it produces."""

    def __init__(self, inner: torch.nn.Linear) -> None:
        super().__init__()
        self.inner = inner
        self.shapes: list[tuple[int, ...]] = []

    def forward(self, x):
        out = self.inner(x)
        self.shapes.append(tuple(out.shape))
        return out


@pytest.mark.parametrize("chunk", [16, 39, 64])
def test_chunked_loss_never_materialises_whole_batch_logits(chunk) -> None:
    from support import tiny_llama

    vocab = 211
    model = tiny_llama(vocab=vocab, max_pos=64, seed=11)
    windows = make_windows(random_ids(8 * SEQLEN, vocab, seed=13), SEQLEN)
    recorder = RecordingHead(model.lm_head)
    model.lm_head = recorder
    assert split_head(model)[1] is recorder
    reference = None
    for batch_size in (1, 2, 4, 8):
        recorder.shapes.clear()
        nlls = score_windows(model, windows, batch_size=batch_size, loss_chunk_tokens=chunk)
        reference = reference or nlls
        assert nlls == pytest.approx(reference, rel=1e-5)
        rows = [s[0] for s in recorder.shapes]
        assert all(len(s) == 2 and s[1] == vocab for s in recorder.shapes)
        # the largest logits tensor is bounded by the chunk, whatever the batch size
        assert max(rows) <= chunk
        # and together the chunks cover each scored position exactly once
        assert sum(rows) == windows.shape[0] * (SEQLEN - 1)
