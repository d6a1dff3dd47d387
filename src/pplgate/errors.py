"""Every exception and warning type pplgate raises, in one place: each bad input maps to one specific,
explainable error. Modules import their types from here (this module imports nothing of pplgate's).
"""

from __future__ import annotations


class PplgateError(Exception):
    """Base class for all errors pplgate raises on purpose."""


class DatasetError(PplgateError):
    """The evaluation text could not be loaded or is not the canonical WikiText-2 test split."""


class DatasetNotFound(DatasetError):
    """No copy of the test split was found: not given, not in the shared folder, the hub unavailable."""


class ModelLoadError(PplgateError):
    """A model or tokenizer could not be loaded from the given source."""


class ProtocolError(PplgateError):
    """The requested evaluation cannot follow the canonical protocol (e.g. seqlen too long)."""


class NonFiniteLossError(PplgateError):
    """A window produced a NaN or infinite loss."""

    def __init__(self, window_index: int, value: float) -> None:
        self.window_index = window_index
        self.value = value
        super().__init__(
            f"window {window_index} produced a non-finite mean NLL ({value}); "
            "the perplexity is undefined. Check the model weights/dtype (fp16 overflow?) "
            "or the quantized variant."
        )


class NonFiniteLogitsError(NonFiniteLossError):
    """A comparison met NaN/inf logits: names the window, which model (reference or model) and the position."""

    def __init__(self, window_index: int, which: str, label: str, position: int | None) -> None:
        self.window_index, self.which, self.label, self.position = window_index, which, label, position
        self.value = float("nan")
        where = f" at position {position}" if position is not None else ""
        PplgateError.__init__(
            self,
            f"window {window_index}: the {which} ({label}) produced NaN/inf logits{where}; the KL divergence and the "
            f"perplexity are undefined. Check the {which}'s weights/dtype (fp16 overflow?) or the quantized variant.",
        )


class PerplexityOverflowError(NonFiniteLossError):
    """Every window's loss is finite, but their mean is above ln(float max) (~709.78 nats): exp overflows.

    A uniform guess scores ln(vocabulary) (~11 nats for 50k tokens), so such a model's predictions are
    broken; a PPL of ``inf`` would poison JSON and baselines, hence an error naming the worst window.
    """

    def __init__(self, window_index: int, value: float, mean: float, n_windows: int) -> None:
        self.window_index, self.value, self.mean, self.n_windows = window_index, value, mean, n_windows
        PplgateError.__init__(
            self,
            f"the mean NLL over {n_windows} window(s) is {mean:.6g} nats, above ln(float max) = 709.78: the "
            f"perplexity exp({mean:.6g}) overflows. Worst window: {window_index} (mean NLL {value:.6g} nats; a "
            "uniform guess scores ln(vocabulary size), ~11 nats). The model's predictions are broken: check the "
            "weights/dtype or the quantized variant.",
        )


class BaselineError(PplgateError):
    """A baseline file is malformed; names the file, the key path and (where known) the line."""

    def __init__(self, path: object, keypath: str, message: str, line: int | None = None) -> None:
        self.path = str(path)
        self.keypath = keypath
        self.line = line
        where = f"{self.path}" + (f":{line}" if line is not None else "")
        super().__init__(f"{where}: {keypath or '<top>'}: {message}")


class VariantError(PplgateError):
    """A variant is unknown, misconfigured or unsupported in this environment."""


class LibraryError(VariantError):
    """A quantization or loading library (AutoAWQ, llm-compressor, transformers) failed on this model: one line
    naming the architecture, the kind, the library's own message and the fix."""


class CalibrationError(PplgateError):
    """Calibration data is missing, empty, unreadable or unreachable."""


class CacheError(PplgateError):
    """The quantization cache is misconfigured or an entry cannot be written."""


class CacheWarning(UserWarning):
    """A cache entry was found corrupt or partial and is being rebuilt."""


class OutputError(PplgateError):
    """An output file (``pplgate eval --json``) cannot be written where it was asked for."""


class PlacementError(PplgateError):
    """Workers cannot be given the GPUs they ask for."""
