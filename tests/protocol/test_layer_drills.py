"""Drills: a bug seeded in a quantizer, each named by the per-module error profile.

A tiny random Llama (4 layers, seeded) is quantized correctly by pplgate's RTN (``rtn_quantize_model``,
4 bits, groups of 32) and by the drills' own quantizer loop with one bug each; :func:`moved` between the
two profiles must name the responsible layer or module type on its first line. The calibration drill
uses a small GPTQ (the textbook algorithm: Cholesky of the damped inverse Hessian, column by column with
error feedback, RTN's grid per group), calibrated on the float model's inputs of each Linear.
"""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch
from support import random_ids, tiny_llama

from pplgate.gate.layers import moved
from pplgate.models.rtn import pseudo_quantize_tensor, rtn_quantize_model
from pplgate.protocol.layers import layer_errors, summarize

BITS, GROUP, LAYERS, VOCAB = 4, 32, 4, 101


@contextlib.contextmanager
def one_thread():
    """Tiny matrices: one thread is several times faster than two busy ones (and timings stay stable)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _base(outlier: bool = False) -> torch.nn.Module:
    model = tiny_llama(hidden=64, inter=128, layers=LAYERS, init_range=0.02, vocab=VOCAB)
    if outlier:  # one weight so large that its group's scale, (max - min) / 15, exceeds fp16's 65504
        with torch.no_grad():
            model.model.layers[3].self_attn.o_proj.weight[5, 7] = 2e6
    return model


def _linears(model: torch.nn.Module) -> list[tuple[int, str, torch.nn.Linear]]:
    return [
        (i, name, mod)
        for i, layer in enumerate(model.model.layers)
        for name, mod in layer.named_modules()
        if isinstance(mod, torch.nn.Linear)
    ]


@torch.no_grad()
def drill_quantize(
    model: torch.nn.Module,
    *,
    skip_layer: int | None = None,
    zero_off_layer: int | None = None,
    whole_row: str | None = None,
    fp16_scales: bool = False,
) -> torch.nn.Module:
    """RTN of every decoder Linear, one bug switched on: a layer skipped, the zero-point one too high in a
    layer, one module type quantized per whole row instead of per group, the scales stored in fp16."""
    for i, name, mod in _linears(model):
        if i == skip_layer:
            continue
        group = -1 if whole_row and name.endswith(whole_row) else GROUP
        w = mod.weight
        _, scales, zeros = pseudo_quantize_tensor(w, BITS, group, True)
        s = scales.reshape(-1, 1)
        z = zeros.reshape(-1, 1)  # type: ignore[union-attr]
        if fp16_scales:
            s = s.half().float()
        x = w.float().reshape(s.shape[0], -1)
        q = torch.clamp(torch.round(x / s) + z, 0, 2**BITS - 1)
        z_used = z + 1 if i == zero_off_layer else z
        w.copy_(((q - z_used) * s).reshape(w.shape))
    return model


def _inputs(model: torch.nn.Module, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    xs: dict[str, torch.Tensor] = {}

    def keep(key: str):
        return lambda mod, args, out: xs.__setitem__(key, args[0].reshape(-1, args[0].shape[-1]))

    handles = [mod.register_forward_hook(keep(f"{i}.{n}")) for i, n, mod in _linears(model)]
    with torch.no_grad():
        model(ids.unsqueeze(0))
    for h in handles:
        h.remove()
    return xs


def _gptq(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    w = w.clone().float()
    cols = w.shape[1]
    h = 2 * x.T @ x / x.shape[0]
    h += 0.01 * torch.diag(h).mean() * torch.eye(cols)
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    out = torch.zeros_like(w)
    for c in range(cols):
        if c % GROUP == 0:
            _, s, z = pseudo_quantize_tensor(w[:, c : c + GROUP], BITS, GROUP, True)
        col = w[:, c : c + 1]
        q = (torch.clamp(torch.round(col / s) + z, 0, 2**BITS - 1) - z) * s
        out[:, c : c + 1] = q
        w[:, c:] -= ((col - q) / hinv[c, c]) @ hinv[c : c + 1, c:]
    return out


@torch.no_grad()
def gptq_quantize(model: torch.nn.Module, calibration: torch.Tensor, *, truncated_layer: int | None = None):
    """GPTQ of every decoder Linear on the float model's inputs; ``truncated_layer``'s calibration cut to
    its first 8 tokens (a capture bug that keeps one short batch)."""
    xs = _inputs(model, calibration)
    for i, name, mod in _linears(model):
        x = xs[f"{i}.{name}"]
        mod.weight.copy_(_gptq(mod.weight, x[:8] if i == truncated_layer else x))
    return model


@pytest.fixture(scope="module")
def ids() -> torch.Tensor:
    return random_ids(128, VOCAB, seed=1)


@pytest.fixture(scope="module")
def base() -> torch.nn.Module:
    return _base()


@pytest.fixture(scope="module")
def correct(base, ids) -> dict[str, float]:
    model = copy.deepcopy(base)
    rtn_quantize_model(model, BITS, GROUP, True)
    return summarize(layer_errors(base, model, ids))


def test_a_refactor_that_keeps_the_numbers_moves_nothing(base, ids, correct):
    # the drills' quantizer loop without a bug is pplgate's RTN, weight for weight
    ours, theirs = drill_quantize(copy.deepcopy(base)), copy.deepcopy(base)
    rtn_quantize_model(theirs, BITS, GROUP, True)
    for (_, name, a), (_, _, b) in zip(_linears(ours), _linears(theirs), strict=True):
        assert torch.equal(a.weight, b.weight), name
    assert len(correct) == 7 * LAYERS and all(0.03 < v < 0.2 for v in correct.values()), correct
    assert moved(correct, summarize(layer_errors(base, ours, ids))) == []
    assert moved(correct, summarize(layer_errors(base, theirs, ids))) == []


@pytest.mark.parametrize(
    "bug, first",
    [
        ({"skip_layer": 2}, "layer 2 every module (7): output error "),
        ({"zero_off_layer": 1}, "layer 1 every module (7): output error "),
        ({"whole_row": "mlp.down_proj"}, "layers 0-3 mlp.down_proj: output error "),
    ],
    ids=["one-layer-left-unquantized", "zero-point-off-by-one", "wrong-group-size-in-one-module-type"],
)
def test_a_seeded_bug_is_named_first(base, ids, correct, bug, first):
    lines = moved(correct, summarize(layer_errors(base, drill_quantize(copy.deepcopy(base), **bug), ids)))
    assert lines and lines[0].startswith(first), lines
    assert len(lines) == 1, lines  # nothing else moved: the profile feeds every module the reference's inputs


def test_the_unquantized_layer_reads_zero_error(base, ids, correct):
    lines = moved(correct, summarize(layer_errors(base, drill_quantize(copy.deepcopy(base), skip_layer=2), ids)))
    assert lines[0].endswith("-> 0 (x0)"), lines


def test_fp16_scales_that_overflow_are_named_with_an_infinite_error(ids):
    base = _base(outlier=True)
    right = copy.deepcopy(base)
    rtn_quantize_model(right, BITS, GROUP, True)
    wrong = drill_quantize(copy.deepcopy(base), fp16_scales=True)
    assert not torch.isfinite(wrong.model.layers[3].self_attn.o_proj.weight).all()  # the drill is real
    lines = moved(summarize(layer_errors(base, right, ids)), summarize(layer_errors(base, wrong, ids)))
    # every other module's scales are merely rounded to fp16: below the 10% that counts as a move
    assert len(lines) == 1 and lines[0].startswith("layer 3 self_attn.o_proj: output error ") and "-> inf" in lines[0]


def test_a_truncated_calibration_set_is_named(base, ids):
    calibration = random_ids(512, VOCAB, seed=2)
    with one_thread():
        right = gptq_quantize(copy.deepcopy(base), calibration)
        wrong = gptq_quantize(copy.deepcopy(base), calibration, truncated_layer=2)
    lines = moved(summarize(layer_errors(base, right, ids)), summarize(layer_errors(base, wrong, ids)))
    assert lines and lines[0].startswith("layer 2 "), lines
    assert all(line.startswith("layer 2 ") for line in lines), lines
