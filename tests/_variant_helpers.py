"""Shared helpers for the variant/cache tests: the shared data folder and a tiny random Llama."""

from __future__ import annotations

from pathlib import Path

from pplgate_testutils import need_shared
from pplgate_testutils import tiny_llama as _tiny_llama


def calibration_file() -> Path:
    return need_shared("data", "calibration", "python-3.11-docs-prose.jsonl")


def tiny_llama(*, hidden: int = 128, inter: int = 256, layers: int = 2, seed: int = 0):
    """``(model, tokenizer)``: a seeded random Llama (sizes multiples of 64) with the real GPT-2 tokenizer."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(need_shared("tokenizers", "gpt2")))
    model = _tiny_llama(
        vocab=len(tok),
        max_pos=2048,
        seed=seed,
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        initializer_range=0.02,  # the transformers default (the CPU tests' builder widens it)
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    return model, tok


def make_tiny_llama(out: Path, *, hidden: int = 128, inter: int = 256, layers: int = 2, seed: int = 0) -> Path:
    """:func:`tiny_llama` saved to ``out`` (model + tokenizer)."""
    model, tok = tiny_llama(hidden=hidden, inter=inter, layers=layers, seed=seed)
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out
