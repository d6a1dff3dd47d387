"""Content identity: sha256 of files, what identifies a source model's weights, installed library versions.

Used for quantization-cache keys (:mod:`pplgate.models.quant_cache`) and variant fingerprints (a checkpoint
is identified by its content, not its path).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pplgate.models.source import ModelSource


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


_FILE_HASHES: dict[tuple[str, int, int], str] = {}


def _sha256_file_memo(p: Path) -> str:
    st = p.stat()
    k = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if k not in _FILE_HASHES:
        _FILE_HASHES[k] = sha256_file(p)
    return _FILE_HASHES[k]


SKIP_DIRS = {".git", "__pycache__", ".cache"}


def source_fingerprint(src: ModelSource) -> dict[str, Any]:
    """What identifies the source model's weights for the cache key.

    Local GGUF: the GGUF file's sha256. Local directory: sha256 of every file (relative path +
    content). Hub id: id + revision (``main`` when unpinned — pin ``revision`` in the baseline, or
    a hub update of ``main`` will silently reuse the old entry).
    """
    p = Path(src.path_or_id).expanduser()
    if p.exists():
        if src.gguf_file:
            f = p / src.gguf_file
            return {"type": "gguf", "file": src.gguf_file, "sha256": _sha256_file_memo(f), "size": f.stat().st_size}
        if p.is_file():
            return {"type": "file", "file": p.name, "sha256": _sha256_file_memo(p)}
        h = hashlib.sha256()
        n = 0
        for f in sorted(x for x in p.rglob("*") if x.is_file() and not (SKIP_DIRS & set(x.relative_to(p).parts))):
            h.update(str(f.relative_to(p)).encode() + b"\0" + _sha256_file_memo(f).encode() + b"\n")
            n += 1
        return {"type": "dir", "n_files": n, "sha256": h.hexdigest()}
    out: dict[str, Any] = {"type": "hub", "id": src.path_or_id, "revision": src.revision or "main"}
    if src.gguf_file:
        out["gguf_file"] = src.gguf_file
    return out


def library_versions(*dists: str) -> dict[str, str | None]:
    from importlib import metadata

    out: dict[str, str | None] = {}
    for d in dists:
        try:
            out[d] = metadata.version(d)
        except metadata.PackageNotFoundError:
            out[d] = None
    return out
