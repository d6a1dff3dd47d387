"""The one patch pplgate applies to torch: entries of ``torch.fx``'s private wrap registry dropped after a call.

llm-compressor's sequential pipeline traces each forward with ``torch.fx``; every trace registers the traced
function's globals (the model with them) in ``torch.fx._symbolic_trace._wrapped_fns_to_patch``, a module-level
dict that nothing ever empties. :func:`fx_registry_cleanup` removes what a call added. torch is not pinned to one
version (GPU runners bring their own build): the registry's shape is checked instead, a dict keyed
``(id(globals), name)`` as in torch 2.x (written against torch 2.13).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from pplgate.errors import VariantError


@contextlib.contextmanager
def fx_registry_cleanup() -> Iterator[None]:
    """Drop the ``torch.fx`` wrap-registry entries the call added (each holds a traced model alive)."""
    import torch
    from torch.fx import _symbolic_trace as st

    registry = getattr(st, "_wrapped_fns_to_patch", None)
    if not isinstance(registry, dict):
        raise VariantError(
            f"torch {torch.__version__}: torch.fx._symbolic_trace._wrapped_fns_to_patch is "
            f"{type(registry).__name__}, not the dict pplgate's cleanup is written for (torch 2.13.0, the pin in "
            "ci/constraints-cpu.txt); install a torch 2.x release"
        )
    before = set(st._wrapped_fns_to_patch)
    fx_log = logging.getLogger("torch.fx._symbolic_trace")
    level = fx_log.level
    fx_log.setLevel(logging.ERROR)  # "is_fx_tracing will return true for both ..." once per process
    try:
        yield
    finally:
        fx_log.setLevel(level)
        for key in set(st._wrapped_fns_to_patch) - before:
            del st._wrapped_fns_to_patch[key]
