"""``pplgate reference save`` + ``pplgate compare --reference-file`` end to end on tiny local models with the real
GPT-2 tokenizer and the WikiText-2 test split: the same JSON fields as ``compare``, the exact ones equal, the
reference never loaded, and every bad input a one-line error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support import env_cleared, run_cli, save_tiny_llama

from pplgate.cli import main
from pplgate.locate import WIKITEXT_ENV

COMMON = ["--device", "cpu", "--seqlen", "64", "--batch-size", "2", "--no-progress"]


_no_env = env_cleared(WIKITEXT_ENV)


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory, gpt2_tokenizer_dir) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("reference-models")
    return save_tiny_llama(root / "a", seed=0), save_tiny_llama(root / "b", seed=1)


_run = run_cli


@pytest.fixture(scope="module")
def saved(model_dirs, wikitext_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reference-file") / "a.safetensors"
    argv = ["reference", "save", "--model", str(model_dirs[0]), "--dataset", str(wikitext_dir), *COMMON]
    assert main([*argv, "--max-windows", "3", "--top-k", "16", "--tail-samples", "0", "--out", str(out)]) == 0
    return out


def _error(rc: int, out: str, err: str) -> str:
    assert rc == 2 and "mean_kld" not in out
    lines = err.strip().splitlines()
    assert lines[-1].startswith("pplgate: error: ")
    return lines[-1]


def test_compare_against_the_file_gives_compare_s_fields_and_exact_numbers(
    saved, model_dirs, wikitext_dir, tmp_path, capsys, monkeypatch
) -> None:
    a, b = model_dirs
    exact_json, file_json = tmp_path / "exact.json", tmp_path / "file.json"
    data = ["--dataset", str(wikitext_dir), *COMMON, "--max-windows", "3"]
    rc, _, err = _run(["compare", "--reference", str(a), "--model", str(b), *data, "--json", str(exact_json)], capsys)
    assert rc == 0, err
    import pplgate.measure as measure

    loads = []
    real = measure.Measurer.prepare
    monkeypatch.setattr(measure.Measurer, "prepare", lambda self, src, **kw: loads.append(src) or real(self, src, **kw))
    argv = ["compare", "--reference-file", str(saved), "--model", str(b), *data, "--json", str(file_json)]
    rc, out, err = _run(argv, capsys)
    assert rc == 0, err
    assert len(loads) == 1 and str(b) in loads[0].describe()  # only the compared model is prepared, never the reference
    assert "top-16 + one tail bucket, a lower bound" in out and "mean_kld=" in out
    exact, got = json.loads(exact_json.read_text()), json.loads(file_json.read_text())
    assert set(got) == set(exact)  # the same JSON fields
    for key in ("top1_agreement", "mean_delta_p", "rms_delta_p", "ppl_reference", "ppl_model", "ln_ppl_ratio",
                "window_top1", "window_delta_p", "window_nlls_reference", "window_nlls_model", "n_windows",
                "dataset_sha256", "tokenizer_sha256", "seqlen"):  # fmt: skip
        assert got[key] == exact[key], key
    # a lower bound (the random tiny model's distributions are near-uniform over 50k ids: top-16 holds little of them)
    assert 0 < got["mean_kld"] <= exact["mean_kld"] and got["max_kld"] <= exact["max_kld"]
    assert list(got["kld_percentiles"]) == list(exact["kld_percentiles"])
    assert got["extra"]["reference_file"]["top_k"] == 16 and got["extra"]["reference_variant"] == {"kind": "fp32"}


def test_show_checks_the_file_and_prints_its_fingerprint(saved, capsys) -> None:
    rc, out, err = _run(["reference", "show", str(saved)], capsys)
    assert rc == 0, err
    assert "intact (content sha256" in out and "top_k: 16" in out and "n_windows: 3" in out and "seqlen: 64" in out
    assert "tail_samples: 0" in out


def test_another_seqlen_or_window_count_is_an_error_never_a_number(saved, model_dirs, wikitext_dir, capsys) -> None:
    base = ["compare", "--reference-file", str(saved), "--model", str(model_dirs[1]), "--dataset", str(wikitext_dir)]
    line = _error(*_run([*base, "--device", "cpu", "--seqlen", "32", "--no-progress"], capsys))
    assert "another protocol" in line and "seqlen: file '64', the compared run '32'" in line
    line = _error(*_run([*base, *COMMON, "--max-windows", "2"], capsys))
    assert "holds 3 windows; drop --max-windows" in line


def test_another_tokenizer_is_an_error(saved, model_dirs, wikitext_dir, capsys) -> None:
    from support import need_shared

    neox = need_shared("tokenizers", "gpt-neox-20b")
    argv = ["compare", "--reference-file", str(saved), "--model", str(model_dirs[1]), "--tokenizer", str(neox)]
    line = _error(*_run([*argv, "--dataset", str(wikitext_dir), *COMMON], capsys))
    assert "tokenizer (sha256)" in line and "another protocol" in line


def test_reference_options_with_a_file_are_refused(saved, model_dirs, capsys) -> None:
    argv = ["compare", "--reference-file", str(saved), "--reference", str(model_dirs[0]), *COMMON]
    line = _error(*_run(argv, capsys))
    assert "--reference-file replaces --reference" in line


def test_a_damaged_or_missing_file_is_one_line(saved, model_dirs, wikitext_dir, tmp_path, capsys) -> None:
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(saved.read_bytes()[:-100])
    base = ["compare", "--model", str(model_dirs[1]), "--dataset", str(wikitext_dir), *COMMON]
    line = _error(*_run([*base, "--reference-file", str(cut)], capsys))
    assert "truncated" in line and "pplgate reference save" in line
    line = _error(*_run([*base, "--reference-file", str(tmp_path / "none.safetensors")], capsys))
    assert "no such file" in line


def test_save_refuses_bad_k_and_unwritable_places_before_any_work(model_dirs, tmp_path, capsys) -> None:
    base = ["reference", "save", "--model", str(model_dirs[0]), *COMMON]
    line = _error(*_run([*base, "--top-k", "0", "--out", str(tmp_path / "r.st")], capsys))
    assert "--top-k must be >= 1" in line
    line = _error(*_run([*base, "--out", str(tmp_path / "missing" / "r.st")], capsys))
    assert "--out" in line and "mkdir -p" in line


def test_a_sampled_tail_recovers_what_one_bucket_misses(saved, model_dirs, wikitext_dir, tmp_path, capsys) -> None:
    a, b = model_dirs
    sampled = tmp_path / "sampled.safetensors"
    data = ["--dataset", str(wikitext_dir), *COMMON, "--max-windows", "3"]
    argv = ["reference", "save", "--model", str(a), *data, "--top-k", "16", "--tail-samples", "16"]
    assert main([*argv, "--out", str(sampled)]) == 0
    results = {}
    for name, ref in (("bucket", saved), ("sampled", sampled)):
        out_json = tmp_path / f"{name}.json"
        rc, out, err = _run(
            ["compare", "--reference-file", str(ref), "--model", str(b), *data, "--json", str(out_json)], capsys
        )
        assert rc == 0, err
        results[name] = json.loads(out_json.read_text())
    rc, _, err = _run(
        ["compare", "--reference", str(a), "--model", str(b), *data, "--json", str(tmp_path / "x.json")], capsys
    )
    assert rc == 0, err
    exact = json.loads((tmp_path / "x.json").read_text())["mean_kld"]
    assert results["bucket"]["mean_kld"] < 0.1 * exact  # near-uniform over 50k ids: the top 16 hold little
    assert results["sampled"]["mean_kld"] == pytest.approx(exact, rel=0.2)
    assert "sampled tail (S=16), an unbiased estimate" in results["sampled"]["extra"]["reference_file"]["kld"]
