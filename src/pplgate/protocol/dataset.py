"""WikiText-2 (raw) test split: loading rows and building the canonical evaluation text."""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from pplgate.errors import DatasetError, DatasetNotFound
from pplgate.locate import (
    SHARED_ENV,
    WIKITEXT_ENV,
    WIKITEXT_IN_SHARED,
    Lookup,
    find_wikitext,
    hub_offline,
    hub_refusal,
)
from pplgate.protocol.progress import library_bars_off

CANONICAL_SHA256 = "696cca6b65a171b0a358a4be6732cdfdf2dd6164a32e20fd70e3c13fc4dfae83"
CANONICAL_ROWS = 4358
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
    found_by: str = ""  # the lookup step that found it (see pplgate.locate)

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
        rows = pq.read_table(path, columns=["text"]).column("text").to_pylist()
    except Exception as exc:
        raise DatasetError(f"cannot read parquet file {path}: {exc}") from exc
    for i, row in enumerate(rows):
        if not isinstance(row, str):
            raise DatasetError(f"{path}: row {i} of column 'text' is {row!r} ({type(row).__name__}), not a string")
    return rows


def _rows_from_jsonl(path: Path) -> list[str]:
    rows: list[str] = []
    try:
        with path.open(encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    text = json.loads(line)["text"]
                except (json.JSONDecodeError, KeyError, TypeError, RecursionError) as exc:
                    raise DatasetError(f"{path}:{lineno}: expected a JSON object with a 'text' field") from exc
                if not isinstance(text, str):
                    raise DatasetError(
                        f"{path}:{lineno}: 'text' is {text!r:.60} ({type(text).__name__}), not a string; every line "
                        'must be {"text": "..."}'
                    )
                rows.append(text)
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from exc
    return rows


_SHARD = re.compile(r"-(\d+)-of-(\d+)\.parquet$")


def _read_rows(path: Path) -> list[str]:
    return _rows_from_parquet(path) if path.suffix == ".parquet" else _rows_from_jsonl(path)


def _pick_file(directory: Path, option: str) -> Path:
    """The one file of the test split in ``directory``: its single parquet (a jsonl copy beside it must hold
    the same rows), else its single jsonl; shards of several files, or several different candidates, are an
    error listing them."""
    files = sorted(p for p in directory.iterdir() if p.suffix in (".parquet", ".jsonl") and p.is_file())
    files = [p for p in files if p.name.startswith("test")] or files
    if not files:
        raise DatasetError(f"directory {directory} holds no .parquet or .jsonl file of the test split")
    names = ", ".join(p.name for p in files)
    shards = [p for p in files if (m := _SHARD.search(p.name)) and int(m.group(2)) > 1]
    if shards:
        raise DatasetError(
            f"directory {directory} holds a split sharded over several files ({', '.join(p.name for p in shards)}); "
            "the wikitext-2-raw-v1 test split is one file, test-00000-of-00001.parquet: pass that file with "
            f"{option} FILE (or join the shards into one file)"
        )
    parquets = [p for p in files if p.suffix == ".parquet"]
    chosen = parquets[0] if len(parquets) == 1 else (files[0] if len(files) == 1 else None)
    if chosen is not None and len(files) > 1:  # one parquet and jsonl copies: they must agree
        rows = _read_rows(chosen)
        differ = [p.name for p in files if p != chosen and _read_rows(p) != rows]
        if differ:
            raise DatasetError(
                f"directory {directory} holds {len(files)} candidate files of the test split ({names}) whose rows "
                f"differ ({chosen.name} vs {', '.join(differ)}); pplgate will not guess: pass the one to measure "
                f"with {option} FILE"
            )
    if chosen is None:
        raise DatasetError(
            f"directory {directory} holds {len(files)} candidate files of the test split ({names}); pplgate will "
            f"not guess: pass the one to measure with {option} {directory / files[0].name}"
        )
    return chosen


def _rows_from_path(path: Path, option: str = "--dataset") -> list[str]:
    if path.is_dir():
        path = _pick_file(path, option)
    if not path.exists():
        where = "" if path.is_absolute() else f" (relative to the working directory {Path.cwd()})"
        raise DatasetError(f"dataset path {path} does not exist{where}")
    if path.suffix == ".parquet":
        return _rows_from_parquet(path)
    if path.suffix in (".jsonl", ".json"):
        return _rows_from_jsonl(path)
    raise DatasetError(f"unsupported dataset file {path}: expected .parquet or .jsonl")


HUB_FILE = "test-00000-of-00001.parquet"
# the test split's one file on the hub, below the endpoint ($HF_ENDPOINT or https://huggingface.co)
HUB_FILE_PATH = f"datasets/Salesforce/wikitext/resolve/main/wikitext-2-raw-v1/{HUB_FILE}"
HUB_FILE_URL = f"https://huggingface.co/{HUB_FILE_PATH}"


NOT_AVAILABLE = "the WikiText-2 test split is not available here"  # how a missing-dataset message begins


def missing_dataset_message(lookup: Lookup, reason: str, option: str = "--dataset") -> str:
    """What to do when no copy of the test split can be found: the file, where to get it, where pplgate looked."""
    looked = "\n".join(f"  {i}. {t}" for i, t in enumerate((*lookup.tried, f"the Hugging Face hub: {reason}"), 1))
    return (
        f"{NOT_AVAILABLE}: {reason}.\n"
        f"pplgate looked, in this order:\n{looked}\n"
        "It needs the Hugging Face wikitext/wikitext-2-raw-v1 test split: the file test-00000-of-00001.parquet "
        f'(column "text", {CANONICAL_ROWS} rows), or a .jsonl file with one {{"text": ...}} object per line. '
        "With hub access, `pplgate data fetch` downloads and checks it into the data folder, where pplgate "
        "finds it from then on. Elsewhere, get it on a machine with hub access with\n"
        f"  curl -LO {HUB_FILE_URL}\n"
        "or\n"
        '  python -c \'import datasets; datasets.load_dataset("wikitext", "wikitext-2-raw-v1", split="test")'
        '.to_parquet("test-00000-of-00001.parquet")\'\n'
        f"then run `pplgate data fetch --from FILE` (copies and checks it into the data folder), pass {option} "
        f"PATH, set ${WIKITEXT_ENV}=PATH, or put it in <shared>/{'/'.join(WIKITEXT_IN_SHARED)}/ (shared = "
        f"${SHARED_ENV} or ../shared beside the checkout). `pplgate data` shows every place looked at."
    )


def _rows_from_hub(lookup: Lookup, option: str) -> list[str]:
    refusal = hub_refusal()
    if refusal is not None:
        raise DatasetNotFound(missing_dataset_message(lookup, refusal, option))
    try:
        import datasets
    except ImportError:
        raise DatasetNotFound(
            missing_dataset_message(lookup, "the 'datasets' package is not installed", option)
        ) from None
    try:
        with library_bars_off():
            ds = datasets.load_dataset(*HUB_DATASET, split="test")
    except Exception as exc:
        why = f"datasets.load_dataset{HUB_DATASET} failed ({type(exc).__name__}: {str(exc)[:300]})"
        if hub_offline():
            why = f"HF_HUB_OFFLINE is set and the split is not in the local Hugging Face cache: {why}"
        raise DatasetNotFound(missing_dataset_message(lookup, why, option)) from exc
    return list(ds["text"])


def locate_and_read(
    path: str | os.PathLike[str] | None = None, *, option: str = "--dataset"
) -> tuple[list[str], str, str]:
    """``(rows, source, found_by)`` of the wikitext-2-raw-v1 test split, looked up in
    :mod:`pplgate.locate`'s order: ``path`` (the value of ``option``), ``$PPLGATE_WIKITEXT``, the shared
    folder, the Hugging Face hub. Raises :class:`DatasetNotFound` when no step has it."""
    lookup = find_wikitext(path, option=option)
    if lookup.path is not None:
        try:
            return _rows_from_path(lookup.path, option), str(lookup.path), lookup.step
        except DatasetError as exc:
            raise DatasetError(f"{exc} (from {lookup.step})") from exc
    rows = _rows_from_hub(lookup, option)
    step = "the Hugging Face cache (offline mode)" if hub_offline() else "the Hugging Face hub"
    return rows, "hf:" + "/".join(HUB_DATASET) + ":test", step


def load_wikitext2_test(
    path: str | os.PathLike[str] | None = None, *, option: str = "--dataset"
) -> tuple[list[str], str]:
    """Return (rows, source) of the wikitext-2-raw-v1 test split (see :func:`locate_and_read`)."""
    rows, source, _ = locate_and_read(path, option=option)
    return rows, source


def load_canonical_text(
    path: str | os.PathLike[str] | None = None,
    *,
    allow_noncanonical: bool = False,
    option: str = "--dataset",
    noncanonical_option: str | None = "--allow-noncanonical",
) -> CanonicalText:
    """Load the test split and join rows with ``"\\n\\n"``; verify the canonical sha256.

    ``option`` is the caller's name for ``path`` (``--dataset``, ``--pplgate-dataset``), used in errors;
    ``noncanonical_option`` the caller's option that measures other text anyway (None: it has none).
    """
    rows, source, found_by = locate_and_read(path, option=option)
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
            + (
                f"Use the real test split, or pass {noncanonical_option} to measure anyway "
                "(results are then marked non-canonical)."
                if noncanonical_option
                else f"Point {option} (or ${WIKITEXT_ENV}) at an unmodified copy of the wikitext-2-raw-v1 test "
                "split: the gate measures only the canonical text (`pplgate eval --allow-noncanonical` measures "
                "other text, outside the gate)."
            )
        )
    return CanonicalText(
        text=text, sha256=digest, source=source, n_rows=len(rows), canonical=canonical, found_by=found_by
    )
