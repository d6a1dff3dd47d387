"""WikiText-2 (raw) test split: loading rows and building the canonical evaluation text."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from pplgate.errors import DatasetError

CANONICAL_SHA256 = "696cca6b65a171b0a358a4be6732cdfdf2dd6164a32e20fd70e3c13fc4dfae83"
CANONICAL_ROWS = 4358
WIKITEXT_ENV = "PPLGATE_WIKITEXT"
HUB_DATASET = ("wikitext", "wikitext-2-raw-v1")
JOINER = "\n\n"


@dataclass(frozen=True)
class CanonicalText:
    """The evaluation text and where it came from."""

    text: str
    sha256: str
    source: str
    n_rows: int
    canonical: bool

    @property
    def n_bytes(self) -> int:
        return len(self.text.encode("utf-8"))


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _rows_from_parquet(path: Path) -> list[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:  # pragma: no cover - pyarrow ships with datasets
        raise DatasetError(f"reading {path} needs pyarrow: pip install pyarrow") from exc
    try:
        table = pq.read_table(path, columns=["text"])
    except Exception as exc:
        raise DatasetError(f"cannot read parquet file {path}: {exc}") from exc
    return [str(x) for x in table.column("text").to_pylist()]


def _rows_from_jsonl(path: Path) -> list[str]:
    rows: list[str] = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line)["text"])
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise DatasetError(f"{path}:{lineno}: expected a JSON object with a 'text' field") from exc
    return rows


def _rows_from_path(path: Path) -> list[str]:
    if path.is_dir():
        candidates = sorted(path.glob("test*.parquet")) or sorted(path.glob("*.parquet"))
        candidates += sorted(path.glob("test*.jsonl")) or sorted(path.glob("*.jsonl"))
        if not candidates:
            raise DatasetError(f"directory {path} holds no .parquet or .jsonl file of the test split")
        path = candidates[0]
    if not path.exists():
        where = "" if path.is_absolute() else f" (relative to the working directory {Path.cwd()})"
        raise DatasetError(f"dataset path {path} does not exist{where}")
    if path.suffix == ".parquet":
        return _rows_from_parquet(path)
    if path.suffix in (".jsonl", ".json"):
        return _rows_from_jsonl(path)
    raise DatasetError(f"unsupported dataset file {path}: expected .parquet or .jsonl")


def load_wikitext2_test(path: str | os.PathLike[str] | None = None) -> tuple[list[str], str]:
    """Return (rows, source) of the wikitext-2-raw-v1 test split.

    Sources in order: ``path``; the ``PPLGATE_WIKITEXT`` env var; the Hugging Face hub via
    ``datasets.load_dataset("wikitext", "wikitext-2-raw-v1", split="test")``.
    """
    chosen = path if path is not None else os.environ.get(WIKITEXT_ENV) or None
    if chosen is not None:
        p = Path(chosen).expanduser()
        return _rows_from_path(p), str(p)
    try:
        import datasets
    except ImportError as exc:
        raise DatasetError(
            f"no dataset path given and the 'datasets' package is missing; pass --dataset PATH or set {WIKITEXT_ENV}"
        ) from exc
    try:
        ds = datasets.load_dataset(*HUB_DATASET, split="test")
    except Exception as exc:
        raise DatasetError(
            f"datasets.load_dataset{HUB_DATASET} failed ({type(exc).__name__}: {exc}); "
            f"offline? pass --dataset PATH or set {WIKITEXT_ENV} to a local parquet/jsonl copy"
        ) from exc
    return list(ds["text"]), "hf:" + "/".join(HUB_DATASET) + ":test"


def load_canonical_text(
    path: str | os.PathLike[str] | None = None, *, allow_noncanonical: bool = False
) -> CanonicalText:
    """Load the test split and join rows with ``"\\n\\n"``; verify the canonical sha256."""
    rows, source = load_wikitext2_test(path)
    if not rows or not any(r.strip() for r in rows):
        raise DatasetError(f"dataset from {source} is empty ({len(rows)} rows, no text)")
    text = JOINER.join(rows)
    digest = sha256_text(text)
    canonical = digest == CANONICAL_SHA256
    if not canonical and not allow_noncanonical:
        raise DatasetError(
            f"dataset hash mismatch for {source}: sha256 of the joined text is {digest}, "
            f"the canonical wikitext-2-raw-v1 test text is {CANONICAL_SHA256} "
            f"({len(rows)} rows here, {CANONICAL_ROWS} expected). "
            "Use the real test split, or pass --allow-noncanonical to measure anyway "
            "(results are then marked non-canonical)."
        )
    return CanonicalText(text=text, sha256=digest, source=source, n_rows=len(rows), canonical=canonical)
