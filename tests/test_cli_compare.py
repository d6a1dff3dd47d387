"""``pplgate compare`` end to end on two local model directories, the variant spec, and bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from support import env_cleared, run_cli, save_tiny_llama, tiny_llama

from pplgate.cli import parse_variant_spec
from pplgate.errors import VariantError
from pplgate.locate import WIKITEXT_ENV

COMMON = ["--device", "cpu", "--seqlen", "64", "--max-windows", "2", "--batch-size", "2"]


_no_env = env_cleared(WIKITEXT_ENV)


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory, gpt2_tokenizer_dir) -> tuple[Path, Path]:
    """Two tiny Llamas (seeds 0 and 1) with the real GPT-2 tokenizer, saved with save_pretrained."""
    root = tmp_path_factory.mktemp("compare-models")
    return save_tiny_llama(root / "a", seed=0), save_tiny_llama(root / "b", seed=1)


_run = run_cli


def test_compare_two_local_directories_writes_the_json(tmp_path, capsys, model_dirs, wikitext_dir) -> None:
    a, b = model_dirs
    out_json = tmp_path / "cmp.json"
    argv = ["compare", "--reference", str(a), "--model", str(b), "--dataset", str(wikitext_dir), *COMMON]
    rc, out, err = _run(argv + ["--json", str(out_json)], capsys)
    assert rc == 0, err
    data = json.loads(out_json.read_text())
    progress = [line for line in err.splitlines() if "windows (" in line]
    assert progress and "kld=" in progress[-1] and "\r" not in err
    eval_json = tmp_path / "a.json"
    rc, _, eval_err = _run(
        ["eval", "--model", str(a), "--dataset", str(wikitext_dir), *COMMON, "--json", str(eval_json)], capsys
    )
    assert rc == 0, eval_err
    ev = json.loads(eval_json.read_text())
    # the reference's PPL comes from the same pass and is the canonical number of `eval`
    assert data["ppl_reference"] == pytest.approx(ev["ppl"], rel=1e-12)
    assert data["window_nlls_reference"] == pytest.approx(ev["window_nlls"], rel=1e-12)
    for key in ("dataset_sha256", "tokenizer_sha256", "n_tokens", "n_windows", "n_windows_total", "seqlen", "partial"):
        assert data[key] == ev[key], key
    assert data["n_windows"] == 2 and len(data["window_klds"]) == 2 and len(data["window_top1"]) == 2
    assert data["mean_kld"] > 0.01 and 0 <= data["top1_agreement"] < 1
    assert math.log(data["ppl_model"] / data["ppl_reference"]) == pytest.approx(data["ln_ppl_ratio"], rel=1e-9)
    assert list(data["kld_percentiles"]) == ["99.9", "99", "95", "90", "50", "10", "5", "1"]
    assert data["extra"]["reference"] == str(a) and data["extra"]["variant"] == {"kind": "fp32"}
    assert "mean_kld=" in out and f"wrote {out_json}" in out


def test_a_model_against_itself_is_exactly_zero(capsys, model_dirs, wikitext_dir, tmp_path) -> None:
    a, _ = model_dirs
    out_json = tmp_path / "self.json"
    argv = ["compare", "--model", str(a), "--dataset", str(wikitext_dir), *COMMON, "--no-progress"]
    rc, _, err = _run(argv + ["--json", str(out_json)], capsys)
    assert rc == 0, err
    data = json.loads(out_json.read_text())
    assert data["mean_kld"] == 0.0 and data["max_kld"] == 0.0 and data["top1_agreement"] == 1.0
    assert data["ppl_model"] == data["ppl_reference"]


def test_a_variant_of_the_same_model_against_its_float_reference(capsys, model_dirs, wikitext_dir, tmp_path) -> None:
    a, _ = model_dirs
    out_json = tmp_path / "rtn.json"
    argv = ["compare", "--model", str(a), "--variant", "rtn:w_bit=4,q_group_size=64", "--dataset", str(wikitext_dir)]
    rc, out, err = _run(argv + [*COMMON, "--no-progress", "--json", str(out_json)], capsys)
    assert rc == 0, err
    data = json.loads(out_json.read_text())
    assert data["extra"]["variant"] == {"kind": "rtn", "w_bit": 4, "q_group_size": 64}
    coverage = data["extra"]["prepare_info"]["coverage"]  # what was quantized, in the JSON and on screen
    assert coverage.startswith("quantized ") and "(100.0%)" in coverage and f"coverage: {coverage}" in out
    assert data["extra"]["reference_variant"] == {"kind": "fp32"}
    assert 0 < data["mean_kld"] < 1 and data["top1_agreement"] > 0.5


def test_different_tokenizers_are_an_error_never_a_number(tmp_path, capsys, model_dirs, wikitext_dir) -> None:
    from support import need_shared
    from transformers import AutoTokenizer

    other = tmp_path / "llama2-vocab"
    tiny_llama(vocab=32000, max_pos=128, seed=2).save_pretrained(other)
    AutoTokenizer.from_pretrained(str(need_shared("tokenizers", "llama2"))).save_pretrained(other)
    argv = ["compare", "--reference", str(model_dirs[0]), "--model", str(other), "--dataset", str(wikitext_dir)]
    rc, out, err = _run(argv + [*COMMON, "--no-progress"], capsys)
    assert rc == 2
    assert "mean_kld" not in out
    last = err.strip().splitlines()[-1]
    assert last.startswith("pplgate: error: the reference's tokenizer") and "differ" in last and "--tokenizer" in last


def test_different_vocabulary_sizes_with_one_tokenizer_are_an_error(tmp_path, capsys, model_dirs, wikitext_dir) -> None:
    from transformers import AutoTokenizer

    padded = tmp_path / "padded"
    tok = AutoTokenizer.from_pretrained(str(model_dirs[0]))
    tiny_llama(vocab=len(tok) + 47, max_pos=128, hidden=32, seed=3).save_pretrained(padded)
    tok.save_pretrained(padded)
    argv = ["compare", "--reference", str(model_dirs[0]), "--model", str(padded), "--dataset", str(wikitext_dir)]
    rc, out, err = _run(argv + [*COMMON, "--no-progress"], capsys)
    assert rc == 2 and "mean_kld" not in out
    assert f"{len(tok)} logits per position and the model" in err and "one vocabulary" in err


@pytest.fixture
def no_work(monkeypatch):
    import pplgate.cli as cli

    def refuse(*a, **k):
        raise AssertionError("the CLI started loading before rejecting its arguments")

    monkeypatch.setattr(cli, "Measurer", refuse)


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--variant", "rtn:w_bit"], "'w_bit' is not KEY=VALUE; write e.g. rtn:w_bit=4,q_group_size=64"),
        (["--variant", "banana"], "unknown variant kind 'banana'"),
        (["--variant", "rtn:w_bit=4.0"], "w_bit"),
        (
            ["--reference-variant", "awq:{bad json"],
            "--reference-variant 'awq:{bad json': the params are not valid JSON",
        ),
        (["--batch-size", "0"], "--batch-size must be >= 1"),
        (["--device", "banana"], "--device banana"),
    ],
    ids=["spec-syntax", "unknown-kind", "typed-params", "bad-json", "batch-size", "device"],
)
def test_bad_arguments_fail_before_any_loading(capsys, no_work, extra, needle) -> None:
    rc, out, err = _run(["compare", "--model", "/nonexistent/m", "--no-progress", *extra], capsys)
    assert rc == 2 and out == ""
    assert err.startswith("pplgate: error: ") and needle in err


def test_variant_spec_parsing() -> None:
    assert parse_variant_spec("fp16") == ("fp16", {})
    assert parse_variant_spec("rtn:w_bit=4,q_group_size=64,zero_point=false") == (
        "rtn",
        {"w_bit": 4, "q_group_size": 64, "zero_point": False},
    )
    kind, params = parse_variant_spec("awq:version=gemm, calibration.n_samples=16,calibration.source=/x/y.jsonl")
    assert (kind, params) == ("awq", {"version": "gemm", "calibration": {"n_samples": 16, "source": "/x/y.jsonl"}})
    assert parse_variant_spec('awq:{"w_bit": 4, "apply_clip": false}') == ("awq", {"w_bit": 4, "apply_clip": False})
    assert parse_variant_spec("x:a=0.5,b=null,c=-3") == ("x", {"a": 0.5, "b": None, "c": -3})
    with pytest.raises(VariantError, match="no kind"):
        parse_variant_spec(":w_bit=4")
    with pytest.raises(VariantError, match="both a value and a group"):
        parse_variant_spec("awq:calibration=1,calibration.n_samples=2")
    with pytest.raises(VariantError, match="must be an object"):
        parse_variant_spec("awq:[1]")
