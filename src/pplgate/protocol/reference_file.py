"""A stored top-K reference: the file format, its streamed writer and reader.

**What is stored** (per scored position, the PPL's positions: ``logits[:-1]`` of each window, window order):

- ``w{i}.nll`` ``[L-1]`` fp32: the reference's next-token NLL ``-log p(y)`` (fp32, as the comparison pass
  makes it: Δp from it is exact);
- ``w{i}.ids`` ``[L-1, K]``: the top-K token ids, in the smallest integer dtype that holds the vocabulary
  (uint8, int16, uint16, int32); column 0 is the argmax of the reference's logits (the top-1 of the
  comparison pass, ties included);
- ``w{i}.logprobs`` ``[L-1, K]`` fp16 or fp32: ``log p`` of those ids;
- ``w{i}.tail`` ``[L-1]`` fp32: the tail mass ``1 - Σ_K p``, summed over the other ids (not by subtraction);
- with ``tail_samples`` S > 0, ``w{i}.tail_ids`` ``[L-1, S]`` and ``w{i}.tail_logprobs`` ``[L-1, S]``: S ids drawn
  (with replacement) from the reference's distribution restricted to the ids outside the top K, and their log p
  (what an unbiased estimate of the tail's divergence needs: :mod:`.stored_compare`);
- ``window_nlls`` ``[n]`` fp64: the reference's per-window mean NLLs as the comparison pass sums them
  (``ppl_reference`` is the in-memory pass's, bit for bit on CPU).

**Format**: a safetensors file (8-byte header length, JSON header, data); ``__metadata__`` holds the
protocol fingerprint (dataset sha256, tokenizer name and sha256, windows, seqlen, BOS, the sha256 of the
scored token ids), the reference's identity and dtype, K, the vocabulary size and ``content_sha256``: the
sha256 of the header (that field blanked) and of every data byte. The writer streams window by window
(the header is written first with the hash blanked, patched at the end; a temporary file is renamed into
place only when complete); the reader checks size and hash in one streamed pass, then reads one window
at a time through ``safe_open`` (memory: one batch of windows, never the file).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from pplgate.errors import ProtocolError

FORMAT = "pplgate-topk-reference"
FORMAT_VERSION = "1"
_HASH_KEY = "content_sha256"
_BLANK = "0" * 64
_ST_DTYPES = {
    torch.uint8: "U8",
    torch.int16: "I16",
    torch.uint16: "U16",
    torch.int32: "I32",
    torch.float16: "F16",
    torch.float32: "F32",
    torch.float64: "F64",
}
_FIELDS = ("nll", "ids", "logprobs", "tail")
_SAMPLE_FIELDS = ("tail_ids", "tail_logprobs")
LOGPROB_DTYPES = {"float16": torch.float16, "float32": torch.float32}
# the fingerprint a comparison must match, with the words an error uses
FINGERPRINT = {
    "dataset_sha256": "dataset (sha256)",
    "tokenizer_sha256": "tokenizer (sha256)",
    "seqlen": "seqlen",
    "bos_added": "BOS",
    "n_windows": "number of windows",
    "windows_sha256": "scored token ids (sha256)",
}


def ids_dtype(vocab_size: int) -> torch.dtype:
    """The smallest integer dtype that holds every id below ``vocab_size``."""
    for dtype, top in ((torch.uint8, 2**8), (torch.int16, 2**15), (torch.uint16, 2**16), (torch.int32, 2**31)):
        if vocab_size <= top:
            return dtype
    raise ProtocolError(f"a vocabulary of {vocab_size} entries does not fit int32 token ids")


def windows_sha256(windows: torch.Tensor) -> str:
    """sha256 of the scored windows' token ids (int64, row-major): what both sides must have scored."""
    return hashlib.sha256(windows.to(torch.int64).contiguous().numpy().tobytes()).hexdigest()


def _bytes(t: torch.Tensor) -> bytes:
    t = t.detach().contiguous().cpu()
    if t.dtype == torch.uint16:  # numpy has no view of torch's uint16: go through int16 (same bytes)
        t = t.view(torch.int16)
    return t.numpy().tobytes()


class ReferenceWriter:
    """Writes a stored reference window by window: ``add(nll, ids, logprobs, tail)`` per window, then
    ``close(window_nlls)``. ``meta`` must hold the fingerprint keys, ``top_k`` and ``vocab_size`` (and
    ``tail_samples`` S when the windows carry S sampled tail ids: ``add(..., tail_ids=, tail_logprobs=)``)."""

    def __init__(self, path: str | Path, meta: Mapping[str, Any], *, logprob_dtype: str = "float32") -> None:
        if logprob_dtype not in LOGPROB_DTYPES:
            raise ProtocolError(f"logprob dtype {logprob_dtype!r}: choose one of {', '.join(LOGPROB_DTYPES)}")
        self.path = Path(path)
        self.n, self.rows, self.k = int(meta["n_windows"]), int(meta["seqlen"]) - 1, int(meta["top_k"])
        self.s = int(meta.get("tail_samples", 0))
        if self.s < 0:
            raise ProtocolError(f"--tail-samples {self.s}: the number of sampled tail ids is >= 0")
        self.fields = _FIELDS + (_SAMPLE_FIELDS if self.s else ())
        vocab = int(meta["vocab_size"])
        if not 1 <= self.k <= vocab:
            raise ProtocolError(f"--top-k {self.k}: K must be between 1 and the vocabulary size ({vocab})")
        self.id_dtype, self.lp_dtype = ids_dtype(vocab), LOGPROB_DTYPES[logprob_dtype]
        self.meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            **{k: str(v) for k, v in meta.items()},
            "tail_samples": str(self.s),
            "ids_dtype": str(self.id_dtype).removeprefix("torch."),
            "logprob_dtype": logprob_dtype,
            _HASH_KEY: _BLANK,
        }
        shapes = {"nll": [self.rows], "ids": [self.rows, self.k], "logprobs": [self.rows, self.k], "tail": [self.rows]}
        shapes.update(tail_ids=[self.rows, self.s], tail_logprobs=[self.rows, self.s])
        dtypes = {"nll": torch.float32, "ids": self.id_dtype, "logprobs": self.lp_dtype, "tail": torch.float32}
        dtypes.update(tail_ids=self.id_dtype, tail_logprobs=self.lp_dtype)
        entries: dict[str, Any] = {}
        offset = 0
        for i in range(self.n):
            for f in self.fields:
                size = _numel(shapes[f]) * dtypes[f].itemsize
                entries[f"w{i:06d}.{f}"] = {"dtype": _ST_DTYPES[dtypes[f]], "shape": shapes[f]}
                entries[f"w{i:06d}.{f}"]["data_offsets"] = [offset, offset + size]
                offset += size
        entries["window_nlls"] = {"dtype": "F64", "shape": [self.n], "data_offsets": [offset, offset + 8 * self.n]}
        self.entries, self.dtypes, self.shapes = entries, dtypes, shapes
        self._hasher = hashlib.sha256(_header_bytes(self.meta, entries))
        self._tmp = self.path.with_name(f".{self.path.name}.partial")
        self._fh = open(self._tmp, "wb")  # noqa: SIM115 (closed in close()/abort())
        self._fh.write(_header_bytes(self.meta, entries))
        self._written = 0

    def add(self, nll: torch.Tensor, ids: torch.Tensor, logprobs: torch.Tensor, tail: torch.Tensor, **samples) -> None:
        """One window's rows (in window order); ``tail_ids``, ``tail_logprobs`` when the file has tail samples."""
        if self._written >= self.n:
            raise ProtocolError(f"the reference file was declared with {self.n} windows; got more")
        values = {"nll": nll, "ids": ids, "logprobs": logprobs, "tail": tail, **samples}
        for f in self.fields:
            t = values[f]
            if list(t.shape) != self.shapes[f]:
                raise ProtocolError(f"window {self._written}: {f} has shape {list(t.shape)}, not {self.shapes[f]}")
            self._write(_bytes(t.to(self.dtypes[f])))
        self._written += 1

    def _write(self, data: bytes) -> None:
        self._hasher.update(data)
        self._fh.write(data)

    def close(self, window_nlls: list[float]) -> str:
        """Finish the file (``window_nlls``: the per-window mean NLLs); returns its content sha256."""
        if self._written != self.n or len(window_nlls) != self.n:
            self.abort()
            raise ProtocolError(f"the reference file needs {self.n} windows; got {self._written}")
        self._write(_bytes(torch.tensor(window_nlls, dtype=torch.float64)))
        digest = self._hasher.hexdigest()
        self.meta[_HASH_KEY] = digest
        self._fh.seek(0)
        self._fh.write(_header_bytes(self.meta, self.entries))  # the same length: only the blank hash changes
        self._fh.close()
        os.replace(self._tmp, self.path)
        return digest

    def abort(self) -> None:
        """Drop the partial file."""
        self._fh.close()
        self._tmp.unlink(missing_ok=True)


def _numel(shape: list[int]) -> int:
    out = 1
    for s in shape:
        out *= s
    return out


def _header_bytes(meta: Mapping[str, str], entries: Mapping[str, Any]) -> bytes:
    body = json.dumps({"__metadata__": dict(meta), **entries}, separators=(",", ":"), sort_keys=True).encode()
    body += b" " * (-(len(body) + 8) % 8)  # data starts 8-byte aligned
    return struct.pack("<Q", len(body)) + body


def _fail(path: Path, what: str) -> ProtocolError:
    return ProtocolError(
        f"--reference-file {path}: {what}; write it again with `pplgate reference save` (or restore an intact copy)"
    )


class StoredReference:
    """A stored reference opened for reading: ``meta`` (the metadata), ``window_nlls``, and
    :meth:`windows` (one window's tensors at a time). Opening checks the format, the size and the content
    hash (one streamed pass over the file); every problem is a one-line :class:`ProtocolError`."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise ProtocolError(
                f"--reference-file {path}: no such file; write one with `pplgate reference save --out {path}`"
            )
        header, meta, data_start = self._read_header()
        if meta.get("format") != FORMAT:
            raise ProtocolError(
                f"--reference-file {path}: not a pplgate top-K reference (a safetensors file without format "
                f"{FORMAT!r}: model weights?); write one with `pplgate reference save`"
            )
        if meta.get("format_version") != FORMAT_VERSION:
            raise ProtocolError(
                f"--reference-file {path}: format version {meta.get('format_version')!r}, this pplgate reads "
                f"{FORMAT_VERSION!r}; write it again with this pplgate's `pplgate reference save`"
            )
        ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
        expected = data_start + max(ends, default=0)
        size = self.path.stat().st_size
        if size != expected:
            raise _fail(self.path, f"{size} bytes, its header says {expected} (truncated or appended to)")
        self._check_hash(header, meta, data_start)
        self.meta = meta
        self.n_windows, self.top_k, self.vocab_size = (
            int(meta["n_windows"]),
            int(meta["top_k"]),
            int(meta["vocab_size"]),
        )
        self.seqlen, self.tail_samples = int(meta["seqlen"]), int(meta.get("tail_samples", "0"))
        with safe_open(self.path, framework="pt") as f:
            self.window_nlls: list[float] = f.get_tensor("window_nlls").tolist()

    def _read_header(self) -> tuple[dict, dict, int]:
        with open(self.path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise _fail(self.path, "shorter than a safetensors header (truncated or not a reference file)")
            (n,) = struct.unpack("<Q", head)
            if n > 100 * 2**20 or n > self.path.stat().st_size:
                raise _fail(self.path, "not a safetensors file (no readable header): truncated or another format")
            raw = fh.read(n)
        try:
            header = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise _fail(self.path, "its header is not valid JSON (corrupted, or not a safetensors file)") from None
        if not isinstance(header, dict):
            raise _fail(self.path, "its header is not a safetensors header")
        return header, header.get("__metadata__") or {}, 8 + n

    def _check_hash(self, header: dict, meta: dict, data_start: int) -> None:
        stored = meta.get(_HASH_KEY, "")
        blank = {**meta, _HASH_KEY: _BLANK}
        entries = {k: v for k, v in header.items() if k != "__metadata__"}
        h = hashlib.sha256(_header_bytes(blank, entries))
        with open(self.path, "rb") as fh:
            fh.seek(data_start)
            while block := fh.read(8 * 2**20):
                h.update(block)
        if h.hexdigest() != stored:
            raise _fail(
                self.path, f"content sha256 {h.hexdigest()[:12]} differs from the recorded {stored[:12]} (corrupted)"
            )

    def check_fingerprint(self, actual: Mapping[str, Any], where: str = "the compared run") -> None:
        """A :class:`ProtocolError` naming every fingerprint field that differs between the file and ``actual``."""
        diffs = [
            f"{words}: file {self.meta.get(key)!r}, {where} {str(actual[key])!r}"
            for key, words in FINGERPRINT.items()
            if key in actual and self.meta.get(key) != str(actual[key])
        ]
        if diffs:
            raise ProtocolError(
                f"--reference-file {self.path} was written for another protocol ({'; '.join(diffs)}): its numbers "
                "would not be comparable. Compare with the file's dataset, tokenizer, --seqlen and windows, or write "
                "a reference for this protocol with `pplgate reference save`"
            )

    def windows(self, start: int, stop: int, device: torch.device | str = "cpu") -> Iterator[dict[str, torch.Tensor]]:
        """Windows ``start..stop-1``, one dict per window: ``nll``, ``ids`` (int64), ``logprobs``, ``tail``
        (fp32; and ``tail_ids``, ``tail_logprobs`` when the file has tail samples), on ``device``. Only that
        window's bytes are read."""
        with safe_open(self.path, framework="pt") as f:
            for i in range(start, stop):
                fields = _FIELDS + (_SAMPLE_FIELDS if self.tail_samples else ())
                out = {k: f.get_tensor(f"w{i:06d}.{k}") for k in fields}
                for k in ("ids", "tail_ids"):
                    if k in out:
                        out[k] = out[k].to(torch.int64)
                for k in ("logprobs", "tail_logprobs"):
                    if k in out:
                        out[k] = out[k].float()
                yield {k: v.to(device) for k, v in out.items()}
