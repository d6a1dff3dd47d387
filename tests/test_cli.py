"""The command line: ``pplgate tokens`` and ``pplgate eval`` end to end on real files, exit codes."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support import env_cleared, reference_window_nlls, tiny_gpt2, write_jsonl, wrong_token_lm

from pplgate.cli import main
from pplgate.locate import WIKITEXT_ENV
from pplgate.protocol.dataset import CANONICAL_SHA256
from pplgate.protocol.result import PerplexityResult
from pplgate.protocol.windows import make_windows

RESULT_FIELDS = {f.name for f in dataclasses.fields(PerplexityResult)}


_no_env = env_cleared(WIKITEXT_ENV)


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory, gpt2_tokenizer):
    """A random GPT-2 (real vocabulary size) saved with save_pretrained, plus the real GPT-2 tokenizer."""
    d = tmp_path_factory.mktemp("tiny-gpt2")
    tiny_gpt2(vocab=len(gpt2_tokenizer), max_pos=128, seed=21).save_pretrained(d)
    gpt2_tokenizer.save_pretrained(d)
    return d


def test_tokens_command_real_gpt2(capsys, gpt2_tokenizer_dir: Path, wikitext_dir: Path) -> None:
    rc = main(["tokens", "--tokenizer", str(gpt2_tokenizer_dir), "--dataset", str(wikitext_dir)])
    out = capsys.readouterr().out
    assert rc == 0
    for part in ("tokens=287644", "windows=140", "tail=924", "seqlen=2048", "bos_added=False", CANONICAL_SHA256):
        assert part in out


def test_tokens_command_honours_seqlen_and_env(capsys, monkeypatch, gpt2_tokenizer_dir, wikitext_dir) -> None:
    monkeypatch.setenv(WIKITEXT_ENV, str(wikitext_dir / "test-00000-of-00001.parquet"))
    assert main(["tokens", "--tokenizer", str(gpt2_tokenizer_dir), "--seqlen", "1024"]) == 0
    out = capsys.readouterr().out
    assert "tokens=287644" in out and "windows=280" in out and "tail=924" in out


def test_eval_writes_json_result(tmp_path, capsys, tiny_model_dir, wikitext_dir, gpt2_tokenizer, canonical_text):
    out_json = tmp_path / "result.json"
    # no --dtype: the default "auto" is fp32 on CPU
    argv = ["eval", "--model", str(tiny_model_dir), "--dataset", str(wikitext_dir)]
    argv += ["--device", "cpu", "--seqlen", "64", "--max-windows", "2", "--batch-size", "2"]
    argv += ["--no-progress", "--json", str(out_json)]
    assert main(argv) == 0
    stdout = capsys.readouterr().out
    assert "2/4494 windows (PARTIAL)" in stdout and f"wrote {out_json}" in stdout
    data = json.loads(out_json.read_text())
    assert RESULT_FIELDS <= set(data)
    assert data["n_tokens"] == 287_644 and data["n_windows"] == 2 and data["n_windows_total"] == 287_644 // 64
    assert data["tail_tokens"] == 287_644 % 64 and data["seqlen"] == 64 and data["batch_size"] == 2
    assert data["partial"] is True and data["canonical"] is True and data["dataset_sha256"] == CANONICAL_SHA256
    assert data["dtype"] == "float32" and data["device"] == "cpu" and data["bos_added"] is False
    assert data["extra"]["model"] == str(tiny_model_dir)
    assert PerplexityResult.from_dict(data).ppl == data["ppl"]
    # the numbers are the model's: recompute the two windows independently
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    ids = gpt2_tokenizer(canonical_text.text, return_tensors="pt").input_ids[0]
    ref = reference_window_nlls(model, make_windows(ids, 64)[:2])
    assert data["window_nlls"] == pytest.approx(ref, rel=1e-5)
    assert data["ppl"] == pytest.approx(math.exp(sum(ref) / 2), rel=1e-5)


def test_eval_noncanonical_text_is_marked(tmp_path, capsys, tiny_model_dir) -> None:
    data_file = write_jsonl(tmp_path / "t.jsonl", ["Hello world, this is a small test text. " * 40])
    base = ["eval", "--model", str(tiny_model_dir), "--dataset", str(data_file), "--dtype", "fp32"]
    base += ["--device", "cpu", "--seqlen", "32", "--no-progress"]
    assert main(base) == 2
    assert "--allow-noncanonical" in capsys.readouterr().err
    out_json = tmp_path / "r.json"
    assert main(base + ["--allow-noncanonical", "--json", str(out_json)]) == 0
    assert "NON-CANONICAL" in capsys.readouterr().out
    data = json.loads(out_json.read_text())
    assert data["canonical"] is False and data["partial"] is False and math.isfinite(data["ppl"])


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["eval", "--dataset", "/nonexistent/wikitext.parquet"], "does not exist"),
        (["tokens", "--dataset", "/nonexistent/wikitext.parquet"], "does not exist"),
        (["eval", "--model", "/nonexistent/model", "--dataset", "{wikitext}"], "model path /nonexistent/model"),
        (["eval", "--model", "{model}", "--dataset", "{wikitext}", "--seqlen", "4096"], "--seqlen 128"),
        (
            ["eval", "--model", "{model}", "--dataset", "{wikitext}", "--seqlen", "64", "--max-windows", "0"],
            "--max-windows",
        ),
        (
            ["eval", "--model", "{model}", "--dataset", "{wikitext}", "--seqlen", "64", "--batch-size", "0"],
            "--batch-size",
        ),
        (["eval", "--model", "{model}", "--dataset", "{wikitext}", "--seqlen", "1"], "seqlen must be >= 2"),
    ],
    ids=["eval-no-dataset", "tokens-no-dataset", "no-model", "seqlen-too-long", "max-windows", "batch-size", "seqlen"],
)
def test_errors_exit_2_with_clear_message(capsys, args, needle, tiny_model_dir, wikitext_dir) -> None:
    argv = [a.format(model=tiny_model_dir, wikitext=wikitext_dir) for a in args]
    argv += ["--device", "cpu", "--dtype", "fp32", "--no-progress"] if argv[0] == "eval" else []
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2
    last = err.strip().splitlines()[-1]  # (model loading may print progress bars before it)
    assert last.startswith("pplgate: error:")
    assert needle in last


def _run_cli(args: list[str], tmp_path: Path, **env_updates: str) -> subprocess.CompletedProcess:
    """The real entry point as a user runs it: a fresh process, from a working directory outside any checkout."""
    env = dict(os.environ)
    for var in (WIKITEXT_ENV, "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_ENDPOINT"):
        env.pop(var, None)
    env.update(HF_HOME=str(tmp_path / "hf"), **env_updates)
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run(
        [sys.executable, "-m", "pplgate.cli", *args], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300
    )


def test_hub_unreachable_via_subprocess(tmp_path: Path) -> None:
    """No dataset given, no shared folder and no hub -> exit 2 with the file to get and the option to pass."""
    proc = _run_cli(
        ["tokens", "--tokenizer", "/nonexistent"],
        tmp_path,
        PPLGATE_SHARED=str(tmp_path / "no-shared"),
        HF_DATASETS_OFFLINE="1",
        HF_HUB_OFFLINE="1",
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("pplgate: error:")
    assert "pass --dataset PATH" in proc.stderr and WIKITEXT_ENV in proc.stderr
    assert "test-00000-of-00001.parquet" in proc.stderr and str(tmp_path / "no-shared") in proc.stderr


def test_unreachable_hub_endpoint_fails_without_retries(tmp_path: Path) -> None:
    """Not offline, but the hub does not answer: a quick probe says so instead of datasets' ~28 s of retries."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = _run_cli(
        ["tokens", "--tokenizer", "/nonexistent"],
        tmp_path,
        PPLGATE_SHARED=str(tmp_path / "no-shared"),
        HF_ENDPOINT=f"http://127.0.0.1:{port}",
    )
    assert proc.returncode == 2, proc.stderr
    assert f"cannot connect to 127.0.0.1:{port}" in proc.stderr and "Retrying" not in proc.stderr


def test_tokens_finds_the_shared_folder_without_options(capsys, monkeypatch, shared_dir, gpt2_tokenizer_dir) -> None:
    monkeypatch.setenv("PPLGATE_SHARED", str(shared_dir))
    assert main(["tokens", "--tokenizer", str(gpt2_tokenizer_dir)]) == 0
    out = capsys.readouterr().out
    assert "tokens=287644" in out and f"dataset={shared_dir / 'data' / 'wikitext-2-raw-v1'}" in out
    assert "(found by $PPLGATE_SHARED)" in out


def test_eval_progress_is_short_and_plain_off_a_terminal(capsys, tiny_model_dir, wikitext_dir) -> None:
    argv = ["eval", "--model", str(tiny_model_dir), "--dataset", str(wikitext_dir), "--device", "cpu"]
    assert main(argv + ["--seqlen", "64", "--max-windows", "3"]) == 0
    captured = capsys.readouterr()
    err = captured.err
    assert "\r" not in err and "\n\n" not in err
    lines = [line for line in err.splitlines() if "windows (" in line]
    assert lines and lines[-1].startswith(f"{tiny_model_dir.name} fp32: 3/3 windows (100%)")
    assert str(tiny_model_dir) not in err  # the label is the short name, not the absolute path
    assert "(found by --dataset)" in captured.out


def test_cache_list_and_clear(tmp_path, capsys):
    from pplgate.cli import main
    from pplgate.models.quant_cache import QuantCache

    cache = QuantCache(tmp_path)

    def build(d):
        (d / "weights.bin").write_bytes(b"x" * 16)
        return {"source": "tiny-model"}

    cache.get_or_build("k" * 64, build, {"source": "tiny-model"})
    assert main(["cache", "list", "--cache-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "1 entry" in out and "k" * 64 + "  ?  created" in out
    (tmp_path / ("k" * 64) / "weights.bin").write_bytes(b"corrupt")
    main(["cache", "list", "--cache-dir", str(tmp_path)])
    assert "INVALID" in capsys.readouterr().out
    assert main(["cache", "clear", "--cache-dir", str(tmp_path)]) == 0
    assert "removed" in capsys.readouterr().out
    assert QuantCache(tmp_path).entries() == []


def test_cache_clear_dry_run_and_refusal(tmp_path, capsys):
    from pplgate.cli import main
    from pplgate.models.quant_cache import QuantCache

    QuantCache(tmp_path).get_or_build("c" * 64, lambda d: (d / "w.bin").write_bytes(b"x") and None)
    assert main(["cache", "clear", "--dry-run", "--cache-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"would remove {tmp_path / ('c' * 64)}" in out and (tmp_path / ("c" * 64)).is_dir()
    (tmp_path / "unrelated").mkdir()
    assert main(["cache", "clear", "--cache-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "refusing to clear" in err and "unrelated/" in err and (tmp_path / ("c" * 64)).is_dir()


def test_eval_overflowing_perplexity_is_an_error_naming_the_window(tmp_path, capsys, monkeypatch, gpt2_tokenizer_dir):
    import pplgate.inputs as inputs_mod

    monkeypatch.setattr(inputs_mod, "load_model", lambda *a, **k: wrong_token_lm(50257, 1000.0))
    data = write_jsonl(tmp_path / "t.jsonl", ["Hello world, this is a small test text. " * 40])
    argv = ["eval", "--model", str(gpt2_tokenizer_dir), "--dataset", str(data), "--allow-noncanonical"]
    argv += ["--device", "cpu", "--seqlen", "16", "--max-windows", "3", "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.startswith("pplgate: error: the mean NLL over 3 window(s) is 1000 nats, above ln(float max) = 709.78")
    assert "Worst window: " in err and "check the weights/dtype" in err


@pytest.fixture
def no_work(monkeypatch):
    """Fails the test if the CLI starts loading anything (the Measurer is where every load begins)."""
    import pplgate.cli as cli

    def refuse(*a, **k):
        raise AssertionError("the CLI started loading before rejecting its arguments")

    monkeypatch.setattr(cli, "Measurer", refuse)


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--device", "banana"], "--device banana: device 'banana' is not a device pplgate runs on; use auto, cpu, "),
        (["--device", "CPU"], "use auto, cpu, cuda or cuda:N"),
        (["--device", "cuda:"], "use auto, cpu, cuda or cuda:N"),
        (["--json", "{tmp}/missing/r.json"], "the directory {tmp}/missing does not exist; create it first (mkdir -p "),
        (["--json", "{tmp}/file.txt/r.json"], "the directory {tmp}/file.txt is not a directory"),
        (["--json", "{tmp}"], "is a directory; give a file name, e.g. --json {tmp}/result.json"),
    ],
    ids=["device-banana", "device-upper", "device-colon", "json-missing-dir", "json-parent-is-file", "json-is-dir"],
)
def test_bad_device_or_json_place_fails_before_any_loading(tmp_path, capsys, no_work, extra, needle) -> None:
    (tmp_path / "file.txt").write_text("x")
    argv = ["eval", "--model", "/nonexistent/model", "--dataset", "/nonexistent/data.parquet", "--no-progress"]
    assert main(argv + [a.format(tmp=tmp_path) for a in extra]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # not even the dataset line
    assert captured.err.startswith("pplgate: error: ") and needle.format(tmp=tmp_path) in captured.err


def test_cuda_without_cuda_fails_before_any_loading(capsys, no_work, monkeypatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["eval", "--device", "cuda:1", "--no-progress"]) == 2
    assert "no CUDA device is available; use --device cpu" in capsys.readouterr().err


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only directories")
def test_json_into_an_unwritable_directory_fails_before_any_loading(tmp_path, capsys, no_work) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        assert main(["eval", "--json", str(ro / "r.json"), "--no-progress"]) == 2
        assert "cannot write there" in capsys.readouterr().err
    finally:
        ro.chmod(0o700)


def test_cache_clear_of_an_unknown_key_and_list_with_clear_options(tmp_path, capsys) -> None:
    assert main(["cache", "clear", "--cache-dir", str(tmp_path), "--key", "f" * 64]) == 2
    assert f"no cache entry '{'f' * 64}' in {tmp_path}" in capsys.readouterr().err
    assert main(["cache", "list", "--cache-dir", str(tmp_path), "--key", "x"]) == 2
    assert "go with `pplgate cache clear`" in capsys.readouterr().err


def test_eval_with_a_tokenizer_of_another_model_is_an_error_not_an_index_error(tmp_path, capsys, gpt2_tokenizer_dir):
    tiny_gpt2(vocab=101, max_pos=128, seed=3).save_pretrained(tmp_path / "m")
    data = write_jsonl(tmp_path / "t.jsonl", ["Hello world, this is a small test text. " * 40])
    argv = ["eval", "--model", str(tmp_path / "m"), "--tokenizer", str(gpt2_tokenizer_dir), "--dataset", str(data)]
    assert main(argv + ["--allow-noncanonical", "--device", "cpu", "--seqlen", "64", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "IndexError" not in err
    assert "but the model's vocabulary has 101 entries: the tokenizer is not this model's" in err


def test_ctrl_c_is_one_line_and_exit_130(capsys, monkeypatch) -> None:
    import pplgate.cli as cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cmd_tokens", interrupted)
    try:
        rc = main(["tokens"])
    except KeyboardInterrupt:  # a regression must fail this test, not stop the whole session
        pytest.fail("Ctrl-C escaped main() as a traceback")
    assert rc == 130
    assert capsys.readouterr().err == "pplgate: interrupted\n"


@pytest.mark.parametrize("seqlen", ["1", "0", "-5"])
def test_tokens_rejects_a_bad_seqlen_before_any_loading(capsys, no_work, seqlen) -> None:
    assert main(["tokens", "--seqlen", seqlen]) == 2
    assert capsys.readouterr().err == f"pplgate: error: seqlen must be >= 2 to score any token, got {seqlen}\n"
