"""pplgate: canonical WikiText-2 perplexity as a pytest regression gate for LLM quantization.

The measuring names (which import torch) load on first use (PEP 562), so that ``import
pplgate.gate.spec`` and the other pure modules do not pull in torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from pplgate.errors import (
    DatasetError,
    ModelLoadError,
    NonFiniteLossError,
    PplgateError,
    ProtocolError,
)

if TYPE_CHECKING:
    from pplgate.data import CANONICAL_SHA256, CanonicalText, load_canonical_text, load_wikitext2_test
    from pplgate.engine import TokenizedText, evaluate_perplexity, tokenize_canonical
    from pplgate.result import PerplexityResult

__version__ = "0.1.0"

_LAZY = {
    "CANONICAL_SHA256": "pplgate.data",
    "CanonicalText": "pplgate.data",
    "load_canonical_text": "pplgate.data",
    "load_wikitext2_test": "pplgate.data",
    "TokenizedText": "pplgate.engine",
    "evaluate_perplexity": "pplgate.engine",
    "tokenize_canonical": "pplgate.engine",
    "PerplexityResult": "pplgate.result",
}

__all__ = [
    "CANONICAL_SHA256",
    "CanonicalText",
    "DatasetError",
    "ModelLoadError",
    "NonFiniteLossError",
    "PerplexityResult",
    "PplgateError",
    "ProtocolError",
    "TokenizedText",
    "__version__",
    "evaluate_perplexity",
    "load_canonical_text",
    "load_wikitext2_test",
    "tokenize_canonical",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pplgate' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
