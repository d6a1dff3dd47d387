"""pplgate: canonical WikiText-2 perplexity as a pytest regression gate for LLM quantization.

The public API is imported lazily (PEP 562): ``import pplgate`` (or ``pplgate.errors``,
``pplgate.gate.*``) does not import torch; the first use of e.g. ``pplgate.Measurer`` does.
"""

from __future__ import annotations

import importlib
from typing import Any

from pplgate.errors import (
    BaselineError,
    CacheError,
    CacheWarning,
    CalibrationError,
    DatasetError,
    DatasetNotFound,
    ModelLoadError,
    NonFiniteLogitsError,
    NonFiniteLossError,
    PerplexityOverflowError,
    PlacementError,
    PplgateError,
    ProtocolError,
    VariantError,
)

__version__ = "0.1.0"

# name -> module; no static import of these (not even under TYPE_CHECKING), so that the layers stay
# acyclic for import analysis: modules that read pplgate.__version__ import only this file and errors.
_LAZY = {
    "CANONICAL_SHA256": "pplgate.protocol.dataset",
    "CanonicalText": "pplgate.protocol.dataset",
    "load_canonical_text": "pplgate.protocol.dataset",
    "load_wikitext2_test": "pplgate.protocol.dataset",
    "TokenizedText": "pplgate.protocol.tokens",
    "tokenize_canonical": "pplgate.protocol.tokens",
    "evaluate_perplexity": "pplgate.protocol.engine",
    "PerplexityResult": "pplgate.protocol.result",
    "evaluate_comparison": "pplgate.protocol.compare",
    "evaluate_comparisons": "pplgate.protocol.compare",
    "ComparisonResult": "pplgate.protocol.compare_result",
    "Measurer": "pplgate.measure",
    "Measurement": "pplgate.measure",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pplgate' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "BaselineError",
    "CANONICAL_SHA256",
    "CacheError",
    "CacheWarning",
    "CalibrationError",
    "CanonicalText",
    "ComparisonResult",
    "DatasetError",
    "DatasetNotFound",
    "Measurement",
    "Measurer",
    "ModelLoadError",
    "NonFiniteLogitsError",
    "NonFiniteLossError",
    "PerplexityOverflowError",
    "PerplexityResult",
    "PlacementError",
    "PplgateError",
    "ProtocolError",
    "TokenizedText",
    "VariantError",
    "__version__",
    "evaluate_comparison",
    "evaluate_comparisons",
    "evaluate_perplexity",
    "load_canonical_text",
    "load_wikitext2_test",
    "tokenize_canonical",
]
