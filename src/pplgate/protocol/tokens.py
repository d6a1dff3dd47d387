"""The canonical text tokenized once: :class:`TokenizedText`, the tokenizer's fingerprint, and
:func:`tokenize_canonical` (the tokenizer's defaults, one BOS at most, at the start)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from pplgate.errors import ProtocolError


@dataclass(frozen=True)
class TokenizedText:
    """The canonical text tokenized once with the tokenizer's defaults."""

    ids: torch.Tensor  # 1-D int64
    bos_added: bool
    tokenizer_name: str
    tokenizer_sha256: str

    @property
    def n_tokens(self) -> int:
        return int(self.ids.numel())


def tokenizer_fingerprint(tokenizer) -> str:
    """A stable hash of the tokenizer's vocabulary, merges and special-token behaviour."""
    backend = getattr(tokenizer, "backend_tokenizer", None) or getattr(tokenizer, "_tokenizer", None)
    h = hashlib.sha256()
    if backend is not None and hasattr(backend, "to_str"):
        h.update(backend.to_str().encode("utf-8"))
    else:
        vocab = tokenizer.get_vocab()
        h.update(json.dumps(sorted(vocab.items()), ensure_ascii=False).encode("utf-8"))
    specials = {
        "class": type(tokenizer).__name__,
        "bos": tokenizer.bos_token,
        "eos": tokenizer.eos_token,
        "add_bos": getattr(tokenizer, "add_bos_token", None),
        "add_eos": getattr(tokenizer, "add_eos_token", None),
    }
    h.update(json.dumps(specials, sort_keys=True, default=str).encode("utf-8"))
    return h.hexdigest()


class _DropLongSequenceWarning(logging.Filter):
    """transformers' "Token indices sequence length is longer than the specified maximum sequence length":
    harmless here, the whole text is tokenized once on purpose and cut into windows afterwards."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Token indices sequence length is longer than")


@contextlib.contextmanager
def _long_sequence_warning_off() -> Iterator[None]:
    logger = logging.getLogger("transformers.tokenization_utils_base")
    flt = _DropLongSequenceWarning()
    logger.addFilter(flt)
    try:
        yield
    finally:
        logger.removeFilter(flt)


def tokenize_canonical(tokenizer, text: str) -> TokenizedText:
    """Tokenize the whole text once, with the tokenizer's defaults (one BOS at most, at the start)."""
    with _long_sequence_warning_off():
        ids = tokenizer(text, return_tensors="pt").input_ids[0].to(torch.long)
    if ids.numel() == 0:
        raise ProtocolError(f"tokenizer {type(tokenizer).__name__} encoded the text to nothing")
    bos_id = tokenizer.bos_token_id
    # Compare the same prefix with and without special tokens: the BOS was added iff the default
    # encoding is BOS + the plain encoding (a literal BOS at the start of the text is not "added").
    prefix = text[:256]
    plain = tokenizer(prefix, add_special_tokens=False).input_ids
    full = tokenizer(prefix).input_ids
    bos_added = bos_id is not None and full[:1] == [bos_id] and full[1 : 1 + len(plain)] == plain
    name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
    return TokenizedText(
        ids=ids, bos_added=bool(bos_added), tokenizer_name=str(name), tokenizer_sha256=tokenizer_fingerprint(tokenizer)
    )
