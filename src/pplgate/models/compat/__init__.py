"""Every patch pplgate applies to a third-party library, in one place: one module per library.

* :mod:`.autoawq` — AutoAWQ 0.2.9: banner-free import, kernel probe, the CPU scale-search shim
  (``AwqQuantizer._compute_best_scale``), one ``gc.collect`` per checkpoint load (``awq.models.base.gc``),
  the CPU checkpoint loader and CPU GEMM;
* :mod:`.llmcompressor` — llm-compressor 0.14.0.1: quiet import, captured logs, ``Oneshot.validate_model``,
  ``IntermediatesCache.pin_memory``, ``GPTQ_PRECISION``, ``AWQModifier._set_resolved_mappings``, ``oneshot``
  in memory, recipes;
* :mod:`.torch` — the entries ``torch.fx`` adds to its private wrap registry during a call, dropped after it.

Each patch restores the original when its ``with`` block ends. A patch is written against one version of its
library: :func:`require_version` refuses any other (one line naming the installed and the expected version and
the fix) when pplgate imports the library and again before each patch is applied. Only this package imports
the libraries it patches (an import-linter contract in pyproject.toml).
"""

from __future__ import annotations

from importlib import metadata

from pplgate.errors import VariantError


def require_version(dist: str, expected: str, install: str) -> None:
    """A :class:`VariantError` unless the installed distribution ``dist`` is version ``expected`` (the one
    pplgate's patches of it were written for). Not installed: nothing here (importing it says so, with the fix)."""
    try:
        installed = metadata.version(dist)
    except metadata.PackageNotFoundError:
        return
    if installed != expected:
        raise VariantError(
            f"{dist} {installed} is installed, but pplgate's patches of it are written for {dist} {expected}: "
            f"install that version ({install}; the pin is in pyproject.toml's extras and ci/constraints-cpu.txt)"
        )
