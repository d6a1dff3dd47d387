"""The one support module of pplgate's tests: the shared data folder, skip-or-fail, synthetic inputs, tiny
seeded models (one Llama builder with explicit parameters, one GPT-2 builder) and an independent float64
reference.

Imported by the tests as ``support`` (``tests/`` is on ``sys.path`` through ``tests/conftest.py``).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import os
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from pplgate.protocol.dataset import CanonicalText, sha256_text
from pplgate.protocol.tokens import TokenizedText

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
            from pplgate.models.compat.autoawq import import_autoawq

            import_autoawq()  # first import through pplgate: AutoAWQ's banner is known and dropped
        return importlib.import_module(name)
    except ImportError as exc:
        skip_or_fail(
            f"module {name!r} is not installed ({exc}); install it with: {install}",
            allow_module_level=allow_module_level,
        )


def env_cleared(*names: str):
    """An autouse fixture that removes ``names`` from the environment for each test of the module that binds
    it: ``_no_env = env_cleared(WIKITEXT_ENV)``."""

    @pytest.fixture(autouse=True)
    def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
        for name in names:
            monkeypatch.delenv(name, raising=False)

    return _no_env


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


def tiny_llama(
    *,
    vocab: int = 101,
    max_pos: int = 128,
    hidden: int = 32,
    inter: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    init_range: float = 0.2,
    tie: bool = False,
    bos: int | None = None,
    eos: int | None = None,
    seed: int = 0,
):
    """A seeded, randomly initialised fp32 Llama in eval mode (``torch.manual_seed(seed)`` right before it is built).

    The defaults are the engine tests' model: hidden 32, 2 layers, ``init_range`` 0.2 (larger than the
    transformers default 0.02, so logits are far from uniform), untied embeddings, no special tokens.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        vocab_size=vocab,
        max_position_embeddings=max_pos,
        initializer_range=init_range,
        tie_word_embeddings=tie,
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=None,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg).eval()


def gpt2_tokenizer():
    """The real GPT-2 tokenizer from the shared folder (skipped, or failed under CI, when absent)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(need_shared("tokenizers", "gpt2")))


def tiny_llama_gpt2(*, hidden: int = 128, inter: int = 256, layers: int = 2, seed: int = 0):
    """``(model, tokenizer)`` for the variant tests: :func:`tiny_llama` with the real GPT-2 tokenizer's
    vocabulary and special tokens, sizes multiples of 64, the transformers default init and tied embeddings."""
    tok = gpt2_tokenizer()
    model = tiny_llama(
        vocab=len(tok),
        max_pos=2048,
        hidden=hidden,
        inter=inter,
        layers=layers,
        init_range=0.02,
        tie=True,
        bos=tok.bos_token_id,
        eos=tok.eos_token_id,
        seed=seed,
    )
    return model, tok


def save_tiny_llama(out: Path, *, hidden: int = 128, inter: int = 256, layers: int = 2, seed: int = 0) -> Path:
    """:func:`tiny_llama_gpt2` saved to ``out`` (model + tokenizer), a model directory to load by path."""
    model, tok = tiny_llama_gpt2(hidden=hidden, inter=inter, layers=layers, seed=seed)
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


def calibration_file() -> Path:
    """The offline AWQ calibration corpus of the shared folder."""
    return need_shared("data", "calibration", "python-3.11-docs-prose.jsonl")


def tiny_gpt2(*, vocab: int = 101, max_pos: int = 128, seed: int = 0):
    """A seeded, randomly initialised fp32 GPT-2 in eval mode (n_embd 32, 2 layers, 2 heads)."""
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


def wrong_token_lm(vocab: int, nats: float = 1000.0, by_first_token: dict[int, float] | None = None) -> LogitFnLM:
    """A :class:`LogitFnLM` whose logits put ``nats`` on the token after the right one, so every window's mean
    NLL is ~``nats`` (``by_first_token``: another value for the windows that start with that token)."""

    def fn(ids: torch.Tensor) -> torch.Tensor:
        mag = torch.full((ids.shape[0], 1, 1), float(nats))
        for tok, value in (by_first_token or {}).items():
            mag[ids[:, 0] == tok] = float(value)
        wrong = (torch.roll(ids, -1, dims=1) + 1) % vocab
        return torch.zeros(*ids.shape, vocab).scatter_(2, wrong[..., None], mag.expand(*ids.shape, 1))

    return LogitFnLM(fn)


def write_jsonl(path: Path, rows: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": r}) + "\n" for r in rows), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------
# Real pytest sessions of the gate (pytester)
# ---------------------------------------------------------------------------------------------

FP32_ENTRY = """
fp32:
  kind: fp32
  tolerance:
    - {type: absolute, max_delta: 0.001}   # fp32 on CPU is deterministic
"""


def tiny_baseline(
    model_dir: Path,
    variants: str = "",
    *,
    name: str = "tiny",
    comment: str = "tiny test model",
    max_windows: int = 4,
) -> str:
    """A baseline file for the plugin tests' tiny model: one ``cpu`` profile (smoke marker, seqlen 128,
    batch 2) holding ``variants`` (YAML at any indentation; default: :data:`FP32_ENTRY`)."""
    head = textwrap.dedent(
        f"""\
        # {comment}
        schema_version: 1
        model:
          name: {name}
          source: {model_dir}
        profiles:
          cpu:
            marker: smoke
            device: cpu
            seqlen: 128
            batch_size: 2
            max_windows: {max_windows}
            variants:"""
    )
    return head + textwrap.indent(textwrap.dedent(variants or FP32_ENTRY), "      ").rstrip() + "\n"


GATE_ARGS = ("-p", "pplgate.plugin", "-p", "no:cacheprovider", "-rA")  # what every plugin session passes

# A conftest registering the test-only kind ``test-perturbed``: fp32 with a seeded weight perturbation of
# scale ``scale`` (a second variant whose PPL and KLD against fp32 grow with the scale).
PERTURBED_CONFTEST = textwrap.dedent(
    """
    import time, torch
    from pplgate.models.registry import register
    from pplgate.models.variant import PreparedModel, Variant

    @register
    class Perturbed(Variant):
        kind = "test-perturbed"

        def fingerprint(self):
            return {"kind": self.kind, "scale": self.params.get("scale", 0.0)}

        def prepare(self, ctx):
            t0 = time.perf_counter()
            model = ctx.load("fp32", fresh=True)
            gen = torch.Generator().manual_seed(1)
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(torch.randn(p.shape, generator=gen) * self.params["scale"])
            return PreparedModel(model, "quantized", time.perf_counter() - t0)
    """
)


# A conftest registering the test-only kind ``test-broken``, whose prepare raises as a team's code might.
BROKEN_CONFTEST = textwrap.dedent(
    """
    from pplgate.models.registry import register
    from pplgate.models.variant import Variant

    @register
    class Broken(Variant):
        kind = "test-broken"

        def fingerprint(self):
            return {"kind": self.kind}

        def prepare(self, ctx):
            raise RuntimeError("synthetic prepare failure")
    """
)


def wikitext_path() -> Path:
    """``$PPLGATE_WIKITEXT`` or the shared WikiText-2 folder (skipped, or failed under CI, when absent)."""
    env = os.environ.get("PPLGATE_WIKITEXT")
    path = Path(env) if env else need_shared("data", "wikitext-2-raw-v1", allow_module_level=True)
    if not path.exists():
        skip_or_fail(f"PPLGATE_WIKITEXT={path} does not exist", allow_module_level=True)
    return path


def save_gate_model(d: Path) -> Path:
    """The plugin tests' model directory: a 1-layer tied Llama (transformers' init range) over the real
    GPT-2 tokenizer's vocabulary, saved with that tokenizer."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(need_shared("tokenizers", "gpt2")))
    tiny_llama(vocab=len(tok), max_pos=256, layers=1, heads=2, init_range=0.02, tie=True).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def gate_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The environment of a plugin session: the WikiText-2 path, no GitHub step summary."""
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    monkeypatch.setenv("PPLGATE_WIKITEXT", str(wikitext_path()))


def gate_project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, conftest: str) -> pytest.Pytester:
    """A pytester project for the gate: :func:`gate_env`, an empty ini and ``conftest``."""
    gate_env(monkeypatch)
    pytester.makeini("[pytest]\n")
    pytester.makeconftest(conftest)
    return pytester


# how the gate words a better number outside its tolerance (pplgate.gate.verdict)
IMPROVED_TEXT = (
    "PERPLEXITY IMPROVEMENT outside tolerance (still a failure: re-record it, or let the rule bound only a worse "
    "number with `direction: worse`): measured"
)


def team_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, quant_source: str):
    """A real, importable package ``name`` (``__init__.py`` and ``quant.py``) on sys.path, as an installed team
    package would be; yields its folder and drops the modules the test imported from it (a later in-process
    pytester session must not find a stale one)."""
    pkg = tmp_path / "src" / name
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "quant.py").write_text(quant_source)
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    for mod in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
        monkeypatch.delitem(sys.modules, mod)
    yield pkg
    for mod in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
        del sys.modules[mod]


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``pplgate ARGV`` in this process: its exit code, stdout and stderr."""
    from pplgate.cli import main

    rc = main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err
