"""pplgate: canonical WikiText-2 perplexity as a pytest regression gate for LLM quantization."""

from pplgate.data import CANONICAL_SHA256, CanonicalText, load_canonical_text, load_wikitext2_test
from pplgate.engine import TokenizedText, evaluate_perplexity, tokenize_canonical
from pplgate.errors import (
    DatasetError,
    ModelLoadError,
    NonFiniteLossError,
    PplgateError,
    ProtocolError,
)
from pplgate.result import PerplexityResult

__version__ = "0.1.0"

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
