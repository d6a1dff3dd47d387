"""Shared helpers for the variant/cache tests: the shared data folder and a tiny random Llama."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    return Path(os.environ.get("PPLGATE_SHARED", REPO.parent / "shared")).expanduser()


def need_shared(*rel: str) -> Path:
    p = shared_dir().joinpath(*rel)
    if not p.exists():
        pytest.skip(f"{p} is absent: these tests need the shared data folder (../shared or $PPLGATE_SHARED)")
    return p


def calibration_file() -> Path:
    return need_shared("data", "calibration", "python-3.11-docs-prose.jsonl")


def tiny_llama(*, hidden: int = 128, inter: int = 256, layers: int = 2, seed: int = 0):
    """``(model, tokenizer)``: a seeded random Llama (sizes multiples of 64) with the real GPT-2 tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(str(need_shared("tokenizers", "gpt2")))
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg).eval(), tok


def make_tiny_llama(out: Path, *, hidden: int = 128, inter: int = 256, layers: int = 2, seed: int = 0) -> Path:
    """:func:`tiny_llama` saved to ``out`` (model + tokenizer)."""
    model, tok = tiny_llama(hidden=hidden, inter=inter, layers=layers, seed=seed)
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out
