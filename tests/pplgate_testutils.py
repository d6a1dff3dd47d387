"""Helpers of pplgate's tests: synthetic inputs, tiny seeded models and an independent float64 reference.

Imported by the tests as ``pplgate_testutils`` (a unique name, so it cannot clash with a top-level conftest).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from pplgate.data import CanonicalText, sha256_text
from pplgate.engine import TokenizedText

REQUIRE_ENV = "PPLGATE_REQUIRE_SHARED"
SHARED_ENV = "PPLGATE_SHARED"
REPO = Path(__file__).resolve().parents[1]
_TRUE = ("1", "true", "yes")


def require_shared() -> bool:
    """Under CI (``$CI`` true) or ``PPLGATE_REQUIRE_SHARED=1`` a missing input fails instead of skipping."""
    return any(os.environ.get(var, "").lower() in _TRUE for var in (REQUIRE_ENV, "CI"))


def skip_or_fail(reason: str, *, allow_module_level: bool = False) -> None:
    """Skip with ``reason``; fail instead under :func:`require_shared` (a CI must not lose coverage silently)."""
    if require_shared():
        pytest.fail(f"{reason} [a failure, not a skip: CI or {REQUIRE_ENV} is set]", pytrace=False)
    pytest.skip(reason, allow_module_level=allow_module_level)


def need_module(name: str, install: str, *, allow_module_level: bool = False):
    """Import ``name``; skipped with the install command when missing (a failure under :func:`require_shared`)."""
    try:
        if name.split(".")[0] == "awq" and importlib.util.find_spec("awq") is not None:
            from pplgate.awq import import_autoawq

            import_autoawq()  # first import through pplgate: AutoAWQ's banner is known and dropped
        return importlib.import_module(name)
    except ImportError as exc:
        skip_or_fail(
            f"module {name!r} is not installed ({exc}); install it with: {install}",
            allow_module_level=allow_module_level,
        )


def shared_root() -> Path:
    """``$PPLGATE_SHARED`` or ``<repo>/../shared``."""
    env = os.environ.get(SHARED_ENV)
    return Path(env).expanduser().resolve() if env else (REPO.parent / "shared").resolve()


def need_shared(*rel: str, allow_module_level: bool = False) -> Path:
    """``shared_root() / rel``; skipped with the reason when absent (a failure under ``$PPLGATE_REQUIRE_SHARED``)."""
    p = shared_root().joinpath(*rel)
    if not p.exists():
        skip_or_fail(
            f"{p} is absent: these tests need the shared data folder (../shared or ${SHARED_ENV})",
            allow_module_level=allow_module_level,
        )
    return p


# ---------------------------------------------------------------------------------------------
# Synthetic inputs and tiny models (seeded, fp32, CPU)
# ---------------------------------------------------------------------------------------------


def synthetic_dataset(text: str = "synthetic", canonical: bool = False) -> CanonicalText:
    return CanonicalText(text=text, sha256=sha256_text(text), source="synthetic", n_rows=1, canonical=canonical)


def synthetic_tokens(ids: torch.Tensor, bos_added: bool = False) -> TokenizedText:
    return TokenizedText(ids=ids.to(torch.long), bos_added=bos_added, tokenizer_name="synthetic", tokenizer_sha256="0")


def random_ids(n: int, vocab: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (n,), generator=g, dtype=torch.long)


def tiny_llama(vocab: int = 101, max_pos: int = 128, seed: int = 0, **overrides):
    from transformers import LlamaConfig, LlamaForCausalLM

    kw = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=vocab,
        max_position_embeddings=max_pos,
        initializer_range=0.2,  # larger than default so logits are far from uniform
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    kw.update(overrides)
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**kw)).eval()


def tiny_gpt2(vocab: int = 101, max_pos: int = 128, seed: int = 0, **overrides):
    from transformers import GPT2Config, GPT2LMHeadModel

    kw = dict(
        n_embd=32,
        n_layer=2,
        n_head=2,
        n_positions=max_pos,
        vocab_size=vocab,
        initializer_range=0.2,
        bos_token_id=min(50256, vocab - 1),
        eos_token_id=min(50256, vocab - 1),
    )
    kw.update(overrides)
    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(**kw)).eval()


def reference_window_nlls(model, windows: torch.Tensor) -> list[float]:
    """Independent float64 reference: full logits -> log_softmax in float64 -> gather, one window at a time."""
    out = []
    with torch.no_grad():
        for w in windows:
            logits = model(input_ids=w[None]).logits[0].double()
            logp = torch.log_softmax(logits[:-1], dim=-1)
            nll = -logp.gather(1, w[1:, None]).squeeze(1)
            out.append(float(nll.mean()))
    return out


def reference_ppl(window_nlls: list[float]) -> float:
    return math.exp(sum(window_nlls) / len(window_nlls))


class _Out(SimpleNamespace):
    pass


class LogitFnLM(torch.nn.Module):
    """A hand-made causal LM without ``base_model``: logits = ``fn(input_ids)`` (full-logits path).

    Records every ``input_ids`` batch it sees in ``self.seen``.
    """

    def __init__(self, fn, max_pos: int | None = None, **config) -> None:
        super().__init__()
        self.fn = fn
        self.config = SimpleNamespace(max_position_embeddings=max_pos, **config)
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # gives the model a device and dtype
        self.seen: list[torch.Tensor] = []

    def forward(self, input_ids, use_cache=False, **_):
        self.seen.append(input_ids.clone())
        return _Out(logits=self.fn(input_ids))


def uniform_lm(vocab: int, max_pos: int | None = None) -> LogitFnLM:
    return LogitFnLM(lambda ids: torch.zeros(*ids.shape, vocab), max_pos=max_pos)


def write_jsonl(path: Path, rows: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": r}) + "\n" for r in rows), encoding="utf-8")
    return path
