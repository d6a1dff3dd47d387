"""The result object of one perplexity evaluation, serialisable to JSON."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class PerplexityResult:
    """Everything one canonical evaluation measured (field names are the JSON keys)."""

    ppl: float
    window_nlls: list[float]
    n_tokens: int
    n_windows: int
    n_windows_total: int
    tail_tokens: int
    seqlen: int
    batch_size: int
    bos_added: bool
    tokenizer_name: str
    tokenizer_sha256: str
    dtype: str
    device: str
    dataset_sha256: str
    dataset_source: str
    canonical: bool
    partial: bool
    wall_time_s: float
    tokens_per_s: float
    peak_memory_bytes: int | None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            Path(path).write_text(text + "\n", encoding="utf-8")
        return text

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PerplexityResult:
        return cls(**data)

    def summary(self) -> str:
        scope = f"{self.n_windows}/{self.n_windows_total} windows" + (" (PARTIAL)" if self.partial else "")
        flag = "" if self.canonical else " NON-CANONICAL TEXT"
        return (
            f"ppl={self.ppl:.4f}  {scope}  tokens={self.n_tokens}  seqlen={self.seqlen}  "
            f"bos_added={self.bos_added}  dtype={self.dtype}  device={self.device}  "
            f"{self.tokens_per_s:,.0f} tok/s  {self.wall_time_s:.1f}s{flag}"
        )
