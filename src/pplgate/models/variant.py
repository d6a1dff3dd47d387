"""The variant interface: how a source model becomes the model that is measured.

A variant is named in a baseline file with a ``kind`` and ``params``. Each kind is a :class:`Variant`
subclass in a module of its own (:mod:`pplgate.models.floating`, :mod:`~pplgate.models.rtn`,
:mod:`~pplgate.models.awq`, ...); :mod:`pplgate.models.registry` maps kind names to those classes and
imports a kind's module only when it is used. This module imports no kind: kinds depend on it, never
the other way round.

The contract with the caller (:class:`pplgate.measure.Measurer`): ``check(ctx)`` fails fast, before any
work, on combinations the kind cannot do; ``prepare(ctx)`` builds the model. :meth:`Variant.ensure_checked`
runs ``check`` once per context, so a kind's ``prepare`` can call it to stay safe for direct callers
without checking twice when the Measurer already did.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from pplgate.errors import VariantError
from pplgate.models.source import DTYPE_CHOICES, ModelSource, load_model, resolve_device, resolve_dtype


@dataclass
class ModelContext:
    """What a variant needs to build its model: the source, the device and the tokenizer.

    ``loader`` returns a model for ``(dtype)``; the Measurer passes one that caches per session, and
    variants that modify weights in place must ask for ``fresh=True``.
    """

    source: ModelSource
    device: str
    tokenizer: Any = None
    loader: Callable[..., torch.nn.Module] | None = None
    cache_dir: str | None = None  # quantization cache root (None: the default under the user cache)
    cache_mode: str = "use"  # "use" (read+write), "refresh" (rebuild and write), "off" (no cache)
    device_map: str | None = None  # "auto": spread the model over the visible GPUs

    @functools.cached_property
    def torch_device(self) -> torch.device:
        """``device`` resolved once (:func:`pplgate.models.source.resolve_device`)."""
        return resolve_device(self.device)

    def dtype(self, param: str | None) -> str:
        """The compute dtype for a variant's ``dtype`` param on this context's device (``auto``: the default)."""
        return resolve_dtype(param, self.torch_device)

    def load(self, dtype: str, *, fresh: bool = False) -> torch.nn.Module:
        if self.loader is not None:
            return self.loader(dtype, fresh=fresh)
        device = self.device if self.device_map else self.torch_device
        return load_model(self.source, dtype=dtype, device=device, device_map=self.device_map)


@dataclass
class PreparedModel:
    """A model ready for :func:`pplgate.protocol.engine.evaluate_perplexity`, and how it was obtained."""

    model: torch.nn.Module
    origin: str  # "loaded", "quantized" or "cache"
    prepare_time_s: float
    info: dict[str, Any] = field(default_factory=dict)


def _choices(values: tuple[str, ...]) -> str:
    return ", ".join(values[:-1]) + " or " + values[-1]


class Variant(ABC):
    """One way of turning a source model into the model that is measured."""

    kind: ClassVar[str]
    # the param names this kind accepts; None: the subclass validates its params itself
    params_allowed: ClassVar[tuple[str, ...] | None] = None

    def __init__(self, params: Mapping[str, Any] | None = None) -> None:
        self.params: dict[str, Any] = dict(params or {})
        unknown = [] if self.params_allowed is None else sorted(set(self.params) - set(self.params_allowed))
        if unknown:
            known = ", ".join(self.params_allowed or ()) or "none: this kind takes no params"
            raise VariantError(f"variant kind {self.kind!r}: unknown params {unknown}; known: {known}")

    def dtype_from_params(self, default: str = "auto") -> str:
        """The ``dtype`` param, checked against the dtype policy's choices (``auto`` or a compute dtype)."""
        value = self.params.get("dtype", default)
        if value not in DTYPE_CHOICES:
            raise VariantError(f"{self.kind}: dtype must be {_choices(DTYPE_CHOICES)}; got {value!r}")
        return value

    @abstractmethod
    def fingerprint(self) -> dict[str, Any]:
        """JSON-able description of everything besides the model that determines the number."""

    def check(self, ctx: ModelContext) -> None:  # noqa: B027 - optional hook
        """Fail fast, before any work, on unsupported combinations (raise :class:`VariantError`)."""

    def ensure_checked(self, ctx: ModelContext) -> None:
        """:meth:`check` for ``ctx``, unless it already passed for that very context."""
        if getattr(self, "_checked_ctx", None) is not ctx:
            self.check(ctx)
            self._checked_ctx = ctx

    @abstractmethod
    def prepare(self, ctx: ModelContext) -> PreparedModel:
        """Build (or load) the model to measure."""
