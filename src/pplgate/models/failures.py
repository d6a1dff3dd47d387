"""Library failures at a kind's boundary: an exception raised inside AutoAWQ, llm-compressor or transformers becomes
one :class:`~pplgate.errors.LibraryError` line naming the kind, the architecture, the library's own message and the
fix. Each kind wraps its library once (quantize, load), not every call; pplgate's own errors and out-of-memory pass
through unchanged.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch

from pplgate.errors import LibraryError, PplgateError
from pplgate.models.hashing import library_versions

DOCS = "docs/ARCHITECTURES.md"


def one_line(exc: BaseException, limit: int = 400) -> str:
    """``Type: message`` on one line (whitespace collapsed), at most ``limit`` characters."""
    text = f"{type(exc).__name__}: {' '.join(str(exc).split()) or '(no message)'}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def raised_in(exc: BaseException, fragment: str) -> bool:
    """Whether the traceback of ``exc`` passes through a file whose path contains ``fragment``."""
    tb = exc.__traceback__
    while tb is not None:
        if fragment in tb.tb_frame.f_code.co_filename.replace("\\", "/"):
            return True
        tb = tb.tb_next
    return False


@contextlib.contextmanager
def library_boundary(
    kind: str, arch: str, package: str, fix: str | Callable[[BaseException], str], what: str = "failed"
) -> Iterator[None]:
    """Turn an exception of library ``package`` (a distribution name) into one :class:`LibraryError` line:
    ``<kind>: <package> <version> failed (this <arch> model): <Type: message>; <fix>``."""
    try:
        yield
    except (PplgateError, MemoryError, torch.OutOfMemoryError):
        raise
    except Exception as exc:
        library = f"{package} {library_versions(package).get(package) or ''}".strip()
        hint = fix(exc) if callable(fix) else fix
        raise LibraryError(f"{kind}: {library} {what} (this {arch} model): {one_line(exc)}; {hint}") from exc
