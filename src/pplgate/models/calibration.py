"""Calibration text for data-dependent quantizers (AWQ; later GPTQ).

Sources (``CalibrationSpec.source``):

* ``pileval`` — AutoAWQ's default: hub dataset ``mit-han-lab/pile-val-backup`` split ``validation``,
  shuffled with seed 42 exactly as AutoAWQ does (needs the hub);
* ``hf:NAME[:CONFIG]:SPLIT[:COLUMN]`` — any Hugging Face dataset (column default ``text``);
* a local file: ``.jsonl`` (one JSON object per line, field ``text_column``), ``.json`` (a list of
  strings or objects) or ``.txt`` (paragraphs separated by blank lines);
* ``None``/``"default"``: ``$PPLGATE_CALIBRATION`` if set (a local file), else ``pileval``.

A source may name environment variables (``$VAR``); baselines say ``$PPLGATE_CALIBRATION``. When that
variable is unset it stands for the offline corpus found by :func:`pplgate.locate.find_calibration`
(``data/calibration/python-3.11-docs-prose.jsonl`` in ``$PPLGATE_SHARED`` or ``../shared`` beside the
checkout), so the CLI, scripts and pytest resolve it alike; when that is absent too it is an error
naming the file and where pplgate looked.

:func:`load_calibration` returns every text in a deterministic order; :func:`select_calibration`
then applies AutoAWQ's own sampling rule (strip, tokenize, skip empty texts and texts longer than
``seqlen`` tokens, keep the first ``n_samples``) so that the texts handed to AutoAWQ are exactly the
ones it uses, and their sha256 (:func:`texts_sha256`) goes into the variant fingerprint/cache key.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pplgate.errors import CalibrationError, VariantError
from pplgate.locate import CALIBRATION_ENV, CALIBRATION_IN_SHARED, SHARED_ENV, find_calibration, hub_refusal
from pplgate.models.variant import type_problem
from pplgate.protocol.progress import library_bars_off

PILEVAL = ("mit-han-lab/pile-val-backup", None, "validation", "text")


@dataclass(frozen=True)
class CalibrationSpec:
    source: str | None = None  # see module doc; None -> $PPLGATE_CALIBRATION or pileval
    n_samples: int = 128  # AutoAWQ max_calib_samples
    seqlen: int = 512  # AutoAWQ max_calib_seq_len
    text_column: str = "text"

    @classmethod
    def from_param(cls, value: Any) -> CalibrationSpec:
        """From a baseline ``calibration`` param: None, a source string, or a mapping with
        ``source`` (or ``path``), ``n_samples``, ``seqlen``, ``text_column``."""
        if value is None:
            return cls()
        if isinstance(value, str):
            return cls(source=value)
        if not isinstance(value, Mapping):
            raise CalibrationError(f"calibration must be a string or a mapping, got {type(value).__name__}")
        known = {"source", "path", "n_samples", "seqlen", "text_column"}
        unknown = sorted(set(value) - known)
        if unknown:
            raise CalibrationError(f"calibration: unknown keys {unknown}; known: {sorted(known)}")
        if "source" in value and "path" in value:
            raise CalibrationError("calibration: give either 'source' or 'path', not both")
        types = {"source": str, "path": str, "n_samples": int, "seqlen": int, "text_column": str}
        for key, expected in types.items():
            if key not in value or (value[key] is None and key in ("source", "path")):  # None: the default source
                continue
            problem = type_problem(f"calibration.{key}", value[key], expected, getattr(cls, key, None))
            if problem is not None:
                raise CalibrationError(problem)
        spec = cls(
            source=value.get("source", value.get("path")),
            n_samples=value.get("n_samples", cls.n_samples),
            seqlen=value.get("seqlen", cls.seqlen),
            text_column=value.get("text_column", cls.text_column),
        )
        for key in ("n_samples", "seqlen"):
            if getattr(spec, key) < 1:
                raise CalibrationError(f"calibration: {key} must be a positive integer, got {getattr(spec, key)!r}")
        return spec

    def resolved_source(self) -> str:
        if self.source in (None, "", "default"):
            return os.environ.get(CALIBRATION_ENV) or "pileval"
        source = self.source
        if _names_calibration_env(source) and not os.environ.get(CALIBRATION_ENV):
            found = find_calibration()
            if found.path is None:
                raise CalibrationError(missing_calibration_message(source, found.tried))
            source = source.replace("${" + CALIBRATION_ENV + "}", str(found.path))
            source = source.replace("$" + CALIBRATION_ENV, str(found.path))
        expanded = os.path.expandvars(source)  # baselines may say "$PPLGATE_CALIBRATION"
        if "$" in expanded:
            raise CalibrationError(f"calibration source {self.source!r}: environment variable not set")
        return expanded


def _names_calibration_env(source: str) -> bool:
    return "${" + CALIBRATION_ENV + "}" in source or re.search(r"\$" + CALIBRATION_ENV + r"(?!\w)", source) is not None


def missing_calibration_message(source: str, tried: Sequence[str]) -> str:
    """What to do when ``$PPLGATE_CALIBRATION`` is named but neither set nor found in the shared folder."""
    looked = "\n".join(f"  {i}. {t}" for i, t in enumerate(tried, 1))
    name = CALIBRATION_IN_SHARED[-1]
    return (
        f"calibration source {source!r}: ${CALIBRATION_ENV} is not set and the offline corpus {name} was not "
        f"found.\npplgate looked, in this order:\n{looked}\n"
        f'Set ${CALIBRATION_ENV} to a calibration file (.jsonl with one {{"text": ...}} object per line, .json '
        f"or .txt), or put {name} at <shared>/{'/'.join(CALIBRATION_IN_SHARED)} "
        f"(shared = ${SHARED_ENV} or ../shared beside the checkout)."
    )


@dataclass(frozen=True)
class CalibrationSet:
    texts: tuple[str, ...]
    source: str
    sha256: str

    def __len__(self) -> int:
        return len(self.texts)


def texts_sha256(texts: Sequence[str]) -> str:
    """sha256 over the texts in order (length-prefixed, so boundaries count)."""
    h = hashlib.sha256()
    for t in texts:
        b = t.encode("utf-8")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


def _text_of(obj: Any, column: str, where: str) -> str:
    """The text of one calibration record: a JSON string, or an object whose ``column`` is a string."""
    if isinstance(obj, str):
        return obj
    if isinstance(obj, dict) and isinstance(obj.get(column), str):
        return obj[column]
    if not isinstance(obj, dict):
        got = f"a JSON {type(obj).__name__} ({str(obj)[:40]})"
    elif column not in obj:
        got = f"an object without it (keys: {', '.join(sorted(obj)[:5])})"
    else:
        got = f"{column!r}: {obj[column]!r} ({type(obj[column]).__name__})"
    raise CalibrationError(f"{where}: expected a JSON string or an object with a string {column!r} field, got {got}")


def _from_file(path: Path, column: str) -> list[str]:
    if not path.exists():
        raise CalibrationError(f"calibration file {path} does not exist")
    if path.is_dir():
        raise CalibrationError(f"calibration path {path} is a directory; give a .jsonl, .json or .txt file")
    suffix = path.suffix.lower()
    texts: list[str] = []
    try:
        if suffix == ".jsonl":
            with path.open(encoding="utf-8") as fh:
                for lineno, line in enumerate(fh, 1):
                    if not line.strip():
                        continue
                    try:
                        obj = json.loads(line)
                    except (json.JSONDecodeError, RecursionError) as exc:
                        raise CalibrationError(f"{path}:{lineno}: not valid JSON ({exc})") from exc
                    texts.append(_text_of(obj, column, f"{path}:{lineno}"))
        elif suffix == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, list):
                raise CalibrationError(f"{path}: expected a JSON list of strings or objects")
            texts = [_text_of(x, column, f"{path}: item {i}") for i, x in enumerate(data)]
        elif suffix in (".txt", ".md", ".text"):
            raw = path.read_text(encoding="utf-8")
            texts = [p.strip() for p in raw.replace("\r\n", "\n").split("\n\n")]
        else:
            raise CalibrationError(f"unsupported calibration file {path}: expected .jsonl, .json or .txt")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise CalibrationError(f"cannot read calibration file {path}: {exc}") from exc
    return texts


def _parse_hf(source: str) -> tuple[str, str | None, str, str]:
    parts = source[3:].split(":")
    if len(parts) == 2:
        return parts[0], None, parts[1], "text"
    if len(parts) == 3:
        return parts[0], None, parts[1], parts[2]
    if len(parts) == 4:
        return parts[0], parts[1] or None, parts[2], parts[3]
    raise CalibrationError(f"bad calibration source {source!r}: expected hf:NAME[:CONFIG]:SPLIT[:COLUMN]")


def _from_hub(name: str, config: str | None, split: str, column: str, *, shuffle_seed: int | None) -> list[str]:
    hint = (
        "the hub is unreachable or the dataset is missing; use a local file instead "
        f"(calibration: {{path: FILE}} or ${CALIBRATION_ENV}=FILE)"
    )
    refusal = hub_refusal()
    if refusal is not None:
        raise CalibrationError(f"cannot load calibration dataset {name!r}: {refusal}; {hint}")
    try:
        import datasets
    except ImportError as exc:
        raise CalibrationError(f"calibration from the hub needs the 'datasets' package; {hint}") from exc
    try:
        with library_bars_off():
            args = (name, config) if config else (name,)
            ds = datasets.load_dataset(*args, split=split)
        if shuffle_seed is not None:
            ds = ds.shuffle(seed=shuffle_seed)
        return [str(x) for x in ds[column]]
    except Exception as exc:
        raise CalibrationError(
            f"cannot load calibration dataset {name!r} ({type(exc).__name__}: {str(exc)[:300]}); {hint}"
        ) from exc


def load_calibration(source: str | None = None, *, text_column: str = "text") -> CalibrationSet:
    """All texts of ``source`` (see module doc), in a deterministic order, with their sha256."""
    src = CalibrationSpec(source=source, text_column=text_column).resolved_source()
    if src == "pileval":
        name, config, split, column = PILEVAL
        texts = _from_hub(name, config, split, column, shuffle_seed=42)  # AutoAWQ: dataset.shuffle(seed=42)
        label = "pileval:" + name
    elif src.startswith("hf:"):
        name, config, split, column = _parse_hf(src)
        texts = _from_hub(name, config, split, column, shuffle_seed=None)
        label = src
    else:
        p = Path(os.path.abspath(Path(src).expanduser()))  # errors name the absolute path
        texts = _from_file(p, text_column)
        label = str(p.resolve())
    if not any(t.strip() for t in texts):
        raise CalibrationError(f"calibration source {label} holds no text ({len(texts)} entries)")
    return CalibrationSet(texts=tuple(texts), source=label, sha256=texts_sha256(texts))


def select_calibration(cal: CalibrationSet, tokenizer, n_samples: int, seqlen: int) -> CalibrationSet:
    """The texts AutoAWQ would use (its ``get_calib_dataset`` rule), as AutoAWQ-ready strings.

    Texts are stripped; empty ones and ones longer than ``seqlen`` tokens are skipped; the first
    ``n_samples`` remaining are kept. AutoAWQ concatenates their tokens and cuts ``seqlen`` blocks, so
    fewer than ``seqlen`` tokens in total is an error (it would calibrate on nothing).
    """
    chosen: list[str] = []
    n_tokens = 0
    for text in cal.texts:
        t = text.strip()
        if not t:
            continue
        ids = tokenizer.encode(t)
        if not ids or len(ids) > seqlen:
            continue
        chosen.append(t)
        n_tokens += len(ids)
        if len(chosen) == n_samples:
            break
    if n_tokens < seqlen:
        raise CalibrationError(
            f"calibration source {cal.source}: the {len(chosen)} usable texts hold {n_tokens} tokens, fewer "
            f"than one block of seqlen {seqlen}; use more n_samples, a smaller seqlen or more text"
        )
    return CalibrationSet(texts=tuple(chosen), source=cal.source, sha256=texts_sha256(chosen))


class VariantCalibration:
    """A variant's calibration texts, read once: :meth:`all` the source's texts, :meth:`selected` AutoAWQ's
    selection for a tokenizer. A problem is a :class:`~pplgate.errors.VariantError` naming the kind."""

    def __init__(self, spec: CalibrationSpec | None, kind: str) -> None:
        self.spec, self.kind = spec, kind
        self._all: CalibrationSet | None = None

    def all(self) -> CalibrationSet | None:
        """Every text of the source (None: the variant has no calibration)."""
        if self.spec is None:
            return None
        if self._all is None:
            try:
                self._all = load_calibration(self.spec.source, text_column=self.spec.text_column)
            except CalibrationError as exc:
                raise VariantError(f"{self.kind} calibration: {exc}") from exc
        return self._all

    def selected(self, tokenizer: Any) -> CalibrationSet | None:
        """The texts the variant calibrates on (:func:`select_calibration`; None: no calibration)."""
        cal = self.all()
        if cal is None or self.spec is None:
            return None
        try:
            return select_calibration(cal, tokenizer, self.spec.n_samples, self.spec.seqlen)
        except CalibrationError as exc:
            raise VariantError(f"{self.kind} calibration: {exc}") from exc


def calibration_blocks(cal: CalibrationSet, tokenizer, seqlen: int) -> int:
    """How many ``seqlen`` blocks AutoAWQ will cut from ``cal`` (for reports)."""
    return sum(len(tokenizer.encode(t)) for t in cal.texts) // seqlen
