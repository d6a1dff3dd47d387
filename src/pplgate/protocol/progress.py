"""Progress a person can read: a short label, percentage, ETA and running ppl within 80 columns.

On a terminal (stderr is a tty) :class:`Progress` draws a tqdm bar whose numbers come first and whose
bar is 10 cells wide, so a narrow terminal cuts the label, never the numbers. Elsewhere (a pipe, a CI
log, pytest's capture) it prints a plain line about every 10% of the windows and after the last one:
no carriage-return frames, no blank lines. :func:`library_bars_off` does the same for the progress
bars of the libraries pplgate calls (transformers, huggingface_hub, datasets, AutoAWQ) while they run.
"""

from __future__ import annotations

import contextlib
import math
import re
import sys
import time
from collections.abc import Iterator
from typing import Any, TextIO

LABEL_WIDTH = 24
BAR_FORMAT = "{percentage:3.0f}% {n_fmt}/{total_fmt} [{elapsed}<{remaining}{postfix}] |{bar:10}| {desc}"
_GGUF_QUANT = re.compile(r"[.-](q\d\w*|iq\d\w*|f16|f32|bf16|fp16|fp32)$", re.IGNORECASE)


def shorten(name: str, width: int = LABEL_WIDTH) -> str:
    """``name`` cut to ``width`` characters (the cut marked with ``..``)."""
    return name if len(name) <= width else name[: width - 2] + ".."


def short_model_name(path_or_id: str, gguf_file: str | None = None, width: int = LABEL_WIDTH) -> str:
    """A short, human name of a model: the GGUF file's stem without its quant type
    (``SmolLM2-135M-Instruct.Q4_1.gguf`` -> ``SmolLM2-135M-Instruct``), else the directory's
    basename or the hub id's last part; at most ``width`` characters."""
    if gguf_file:
        name = _GGUF_QUANT.sub("", gguf_file.rsplit("/", 1)[-1].removesuffix(".gguf"))
    else:
        name = path_or_id.rstrip("/").rsplit("/", 1)[-1] or path_or_id
    return shorten(name, width)


def _stderr_is_tty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class Progress:
    """Progress over ``total`` windows; ``update(n, ppl)`` after each batch, ``close()`` at the end.

    ``tty`` (default: whether ``file`` is a terminal) picks the tqdm bar or the plain lines;
    ``ncols`` fixes the bar's width (default: the terminal's, followed when it changes).
    """

    def __init__(
        self,
        total: int,
        label: str,
        *,
        file: TextIO | None = None,
        tty: bool | None = None,
        ncols: int | None = None,
        every: int | None = None,
    ) -> None:
        self.total, self.label = total, label
        self.file = file if file is not None else sys.stderr
        self.tty = _stderr_is_tty(self.file) if tty is None else tty
        self.every = every or max(1, math.ceil(total / 10))
        self.n, self.ppl = 0, float("nan")
        self.t0 = time.perf_counter()
        self._next_line = self.every
        self.bar = None
        if self.tty:
            from tqdm import tqdm

            self.bar = tqdm(
                total=total,
                desc=label,
                unit="win",
                file=self.file,
                bar_format=BAR_FORMAT,
                ncols=ncols,
                dynamic_ncols=ncols is None,
            )

    def update(self, n: int, ppl: float) -> None:
        """``n`` more windows scored; ``ppl`` is the perplexity of all windows so far."""
        self.n += n
        self.ppl = ppl
        if self.bar is not None:
            self.bar.set_postfix_str(self.postfix(), refresh=False)
            self.bar.update(n)
        elif self.n >= self._next_line or self.n >= self.total:
            while self._next_line <= self.n:
                self._next_line += self.every
            self.file.write(self.line() + "\n")
            self.file.flush()

    def line(self) -> str:
        """The plain progress line (non-tty)."""
        from tqdm import tqdm

        elapsed = time.perf_counter() - self.t0
        pct = 100.0 * self.n / self.total if self.total else 100.0
        left = elapsed / self.n * (self.total - self.n) if self.n else float("nan")
        eta = tqdm.format_interval(left) if math.isfinite(left) else "?"
        return (
            f"{self.label}: {self.n}/{self.total} windows ({pct:.0f}%), "
            f"{tqdm.format_interval(elapsed)} elapsed, {eta} left, {self.postfix()}"
        )

    def postfix(self) -> str:
        """The running numbers after the counts (``ppl=...``; a subclass may show others)."""
        return f"ppl={self.ppl:.4f}"

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class _NoFrames:
    """A text stream that passes everything to ``stream`` except tqdm's frames: writes that start with a
    carriage return, and the newline or carriage return a closing bar ends with."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._after_frame = False

    def write(self, s: str) -> int:
        if s.startswith("\r"):
            self._after_frame = True
            return len(s)
        if self._after_frame and s in ("\n", "\r", ""):
            return len(s)
        self._after_frame = False
        return self._stream.write(s)

    def isatty(self) -> bool:
        return False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


@contextlib.contextmanager
def library_bars_off() -> Iterator[None]:
    """While stderr is not a terminal, keep libraries' progress bars out of it (no-op on a terminal).

    Turns off transformers' and huggingface_hub's bars through their own switches and, for the ones
    that call tqdm directly (transformers' GGUF de-quantization, AutoAWQ's ``AWQ``/``Packing`` loops),
    drops carriage-return frames written to ``sys.stderr`` while the block runs; everything else
    written to stderr (warnings, log lines) passes through.
    """
    if _stderr_is_tty(sys.stderr):
        yield
        return
    hf_logging = sys.modules.get("transformers.utils.logging")  # not imported: nothing to switch off yet
    was_on = bool(hf_logging and hf_logging.is_progress_bar_enabled())
    if was_on:
        hf_logging.disable_progress_bar()
    try:
        with contextlib.redirect_stderr(_NoFrames(sys.stderr)):  # type: ignore[type-var]
            yield
    finally:
        if was_on:
            hf_logging.enable_progress_bar()
