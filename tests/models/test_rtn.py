"""RTN math against an independent reference, and the rtn variant on a tiny model."""

from __future__ import annotations

import pytest
import torch
from support import tiny_llama

from pplgate.errors import VariantError
from pplgate.models.registry import make_variant
from pplgate.models.rtn import RtnVariant, pseudo_quantize_tensor, rtn_quantize_model
from pplgate.models.variant import ModelContext


def reference_rtn(w: torch.Tensor, bits: int, group: int, zero_point: bool):
    """Loop-based reference: each group of one row on its own, in float64."""
    out = torch.empty_like(w, dtype=torch.float64)
    scales, zeros = [], []
    rows, cols = w.shape
    g = cols if group == -1 else group
    for r in range(rows):
        for c0 in range(0, cols, g):
            x = w[r, c0 : c0 + g].double()
            if zero_point:
                qmax = 2**bits - 1
                s = max(float(x.max() - x.min()), 1e-5) / qmax
                z = min(max(-round(float(x.min()) / s), 0), qmax)
                q = [min(max(round(float(v) / s) + z, 0), qmax) for v in x]
                out[r, c0 : c0 + g] = torch.tensor([(qi - z) * s for qi in q], dtype=torch.float64)
                zeros.append(z)
            else:
                qmax, qmin = 2 ** (bits - 1) - 1, -(2 ** (bits - 1))
                s = max(float(x.abs().max()), 1e-5) / qmax
                q = [min(max(round(float(v) / s), qmin), qmax) for v in x]
                out[r, c0 : c0 + g] = torch.tensor([qi * s for qi in q], dtype=torch.float64)
            scales.append(s)
    return out, torch.tensor(scales), torch.tensor(zeros) if zero_point else None


@pytest.mark.parametrize("zero_point", [True, False])
@pytest.mark.parametrize(("bits", "group"), [(4, 16), (3, 8), (8, 32), (4, -1)])
def test_matches_reference(bits, group, zero_point):
    torch.manual_seed(bits * 100 + group)
    w = torch.randn(6, 32) * torch.linspace(0.1, 3, 32)  # groups with different ranges
    w[0, :8] = 0.25  # a constant group (scale clamp) and an all-positive one
    w[1, 8:16] = torch.rand(8) + 1
    wq, s, z = pseudo_quantize_tensor(w, bits, group, zero_point)
    ref, ref_s, ref_z = reference_rtn(w, bits, group, zero_point)
    # python round() and torch.round() both round half to even
    torch.testing.assert_close(wq.double(), ref, rtol=0, atol=1e-6)
    torch.testing.assert_close(s.flatten().double(), ref_s.double(), rtol=1e-6, atol=0)
    if zero_point:
        assert torch.equal(z.flatten().long(), ref_z.long())
    else:
        assert z is None


@pytest.mark.parametrize("zero_point", [True, False])
def test_error_bound_and_levels(zero_point):
    torch.manual_seed(1)
    w = torch.randn(16, 128)
    bits, g = 4, 32
    wq, s, z = pseudo_quantize_tensor(w, bits, g, zero_point)
    per_elem_scale = s.repeat_interleave(g, dim=1)
    err = (wq - w).abs()
    if zero_point:  # min and max are inside the grid: every element is within scale/2
        assert (err <= per_elem_scale / 2 + 1e-6).all()
    else:  # symmetric: only values beyond max_int*scale (the negative end) can clip; none here exceed it
        assert (err <= per_elem_scale / 2 + 1e-6).all()
    levels = torch.round(wq / per_elem_scale + (z.repeat_interleave(g, dim=1) if zero_point else 0))
    if zero_point:
        assert levels.min() >= 0 and levels.max() <= 2**bits - 1
    else:
        assert levels.min() >= -(2 ** (bits - 1)) and levels.max() <= 2 ** (bits - 1) - 1
    # at most 2^b distinct values per group
    for grp in wq.reshape(-1, g):
        assert grp.unique().numel() <= 2**bits


def test_asymmetric_beats_symmetric_on_shifted_weights():
    torch.manual_seed(2)
    w = torch.rand(8, 64) * 1.2 - 0.2  # skewed around 0: symmetric wastes most negative levels
    e_asym = (pseudo_quantize_tensor(w, 4, 32, True)[0] - w).pow(2).mean()
    e_sym = (pseudo_quantize_tensor(w, 4, 32, False)[0] - w).pow(2).mean()
    assert e_asym < e_sym / 2


def test_zero_point_clamp_clips_one_sided_groups():
    # AutoAWQ clamps the zero point to [0, 2^b-1]: a group entirely above 0 has zero 0 after the
    # clamp, so values above 15*scale saturate (kept on purpose: same numbers as AutoAWQ).
    w = torch.linspace(0.5, 1.5, 32).reshape(1, 32)
    wq, s, z = pseudo_quantize_tensor(w, 4, 32, True)
    assert int(z) == 0
    assert torch.isclose(wq.max(), 15 * s.flatten()[0])
    assert wq.max() < 1.5 - 0.4


def test_dtype_preserved_and_fp16_input():
    w = torch.randn(4, 64, dtype=torch.float16)
    wq, s, _ = pseudo_quantize_tensor(w, 4, 64, True)
    assert wq.dtype == torch.float16 and s.dtype == torch.float32


@pytest.mark.parametrize("group", [48, 7, 0])
def test_bad_group_sizes(group):
    with pytest.raises(ValueError, match="multiple of q_group_size"):
        pseudo_quantize_tensor(torch.randn(4, 64), 4, group, True)


def test_bad_params():
    with pytest.raises(VariantError, match="unknown params"):
        make_variant("rtn", {"bits": 4})
    with pytest.raises(VariantError, match="w_bit"):
        make_variant("rtn", {"w_bit": 1})
    with pytest.raises(VariantError, match="q_group_size"):
        make_variant("rtn", {"q_group_size": 0})
    with pytest.raises(VariantError, match="dtype"):
        make_variant("rtn", {"dtype": "int8"})


def _tiny_model(hidden=64, inter=128):
    # LlamaConfig's own defaults for init (0.02) and special tokens (bos 1, eos 2)
    return tiny_llama(vocab=97, max_pos=64, hidden=hidden, inter=inter, init_range=0.02, bos=1, eos=2)


def test_quantizes_decoder_linears_only():
    model = _tiny_model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    stats = rtn_quantize_model(model, 4, 32, True)
    assert stats["n_linears"] == 2 * 7
    for n, p in model.named_parameters():
        changed = not torch.equal(before[n], p)
        is_decoder_linear = ".layers." in n and n.endswith("proj.weight")
        assert changed == is_decoder_linear, n
        if is_decoder_linear:
            expected = pseudo_quantize_tensor(before[n], 4, 32, True)[0]
            assert torch.equal(p, expected)


def test_model_group_size_mismatch_names_the_layer():
    model = _tiny_model(hidden=64, inter=96)  # down_proj in_features 96 is not a multiple of 64
    with pytest.raises(VariantError, match=r"mlp.down_proj: in_features 96 is not a multiple of q_group_size 64"):
        rtn_quantize_model(model, 4, 64, True)


def test_variant_prepare_and_check(tmp_path):
    from pplgate.models.source import ModelSource

    model = _tiny_model()
    model.save_pretrained(tmp_path)
    src = ModelSource(str(tmp_path))
    ctx = ModelContext(source=src, device="cpu")
    v = RtnVariant({"w_bit": 4, "q_group_size": 32})
    prep = v.prepare(ctx)
    assert prep.origin == "quantized" and prep.info["n_linears"] == 14 and prep.info["dtype"] == "fp32"
    assert next(prep.model.parameters()).dtype == torch.float32
    with pytest.raises(VariantError, match="hidden_size .* = 64 is not a multiple of q_group_size 128"):
        RtnVariant({"q_group_size": 128}).check(ctx)
    assert v.fingerprint()["q_group_size"] == 32
