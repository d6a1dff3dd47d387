"""pplgate's engine against AutoAWQ's own evaluate_perplexity loop (installed code) on CPU."""

from __future__ import annotations

import math

import pytest
from support import need_module
from support_autoawq_loop import autoawq_perplexity, transcribed_evaluate_perplexity

from pplgate.protocol.dataset import CanonicalText, load_wikitext2_test, sha256_text
from pplgate.protocol.engine import evaluate_perplexity
from pplgate.protocol.tokens import tokenize_canonical

need_module("awq", "pip install --no-deps autoawq==0.2.9", allow_module_level=True)


@pytest.fixture(scope="module")
def setup():
    from support import need_shared, tiny_llama
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(need_shared("tokenizers", "gpt2"))
    rows, _ = load_wikitext2_test(need_shared("data", "wikitext-2-raw-v1"))
    rows = rows[:300]  # a few thousand tokens: two 2048-token windows
    model = tiny_llama(vocab=len(tok), max_pos=4096, hidden=64, inter=128)
    return model, tok, rows


def test_engine_matches_autoawq_installed_loop(setup):
    model, tok, rows = setup
    text = "\n\n".join(rows)
    ds = CanonicalText(text=text, sha256=sha256_text(text), source="test", n_rows=len(rows), canonical=False)
    tokens = tokenize_canonical(tok, text)
    ours = evaluate_perplexity(model, tokens, ds, seqlen=2048, batch_size=2, progress=False)
    ref, how = autoawq_perplexity(model, tok, rows)
    assert how == "installed"
    assert ours.n_windows >= 2
    assert math.isclose(ours.ppl, ref, rel_tol=1e-5), (ours.ppl, ref)


def test_transcription_matches_installed_loop(setup):
    model, tok, rows = setup
    ref, _ = autoawq_perplexity(model, tok, rows)
    assert math.isclose(transcribed_evaluate_perplexity(model, tok, rows), ref, rel_tol=1e-6)
