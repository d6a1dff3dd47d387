"""Model variants: the model as loaded (fp16/bf16/fp32) and quantized forms of it.

A variant is named in a baseline file with a ``kind`` and ``params``. Each kind is a
:class:`Variant` subclass registered with :func:`register`; the gate only uses this interface,
so new methods (e.g. GPTQ) plug in without touching the gate.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from pplgate.errors import PplgateError
from pplgate.models import ModelSource, load_model


class VariantError(PplgateError):
    """A variant is unknown, misconfigured or unsupported in this environment."""


@dataclass
class ModelContext:
    """What a variant needs to build its model: the source, the device and the tokenizer.

    ``loader`` returns a model for ``(dtype)``; the gate passes one that caches per session, and
    variants that modify weights in place must ask for ``fresh=True``.
    """

    source: ModelSource
    device: str
    tokenizer: Any = None
    loader: Callable[..., torch.nn.Module] | None = None
    cache_dir: str | None = None  # quantization cache root (None: the default under the user cache)
    cache_mode: str = "use"  # "use" (read+write), "refresh" (rebuild and write), "off" (no cache)
    device_map: str | None = None  # "auto": spread the model over the visible GPUs

    def load(self, dtype: str, *, fresh: bool = False) -> torch.nn.Module:
        if self.loader is not None:
            return self.loader(dtype, fresh=fresh)
        return load_model(self.source, dtype=dtype, device=self.device, device_map=self.device_map)


@dataclass
class PreparedModel:
    """A model ready for :func:`pplgate.engine.evaluate_perplexity`, and how it was obtained."""

    model: torch.nn.Module
    origin: str  # "loaded", "quantized" or "cache"
    prepare_time_s: float
    info: dict[str, Any] = field(default_factory=dict)


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

    @abstractmethod
    def fingerprint(self) -> dict[str, Any]:
        """JSON-able description of everything besides the model that determines the number."""

    def check(self, ctx: ModelContext) -> None:  # noqa: B027 - optional hook
        """Fail fast, before any work, on unsupported combinations (raise :class:`VariantError`)."""

    @abstractmethod
    def prepare(self, ctx: ModelContext) -> PreparedModel:
        """Build (or load) the model to measure."""


REGISTRY: dict[str, type[Variant]] = {}


def register(cls: type[Variant]) -> type[Variant]:
    """Class decorator adding a variant kind to :data:`REGISTRY`."""
    REGISTRY[cls.kind] = cls
    return cls


def make_variant(kind: str, params: Mapping[str, Any] | None = None) -> Variant:
    """Instantiate the variant ``kind`` with ``params`` (unknown kinds list the known ones)."""
    try:
        cls = REGISTRY[kind]
    except KeyError:
        raise VariantError(f"unknown variant kind {kind!r}; known kinds: {', '.join(sorted(REGISTRY))}") from None
    return cls(params)


class FloatVariant(Variant):
    """The model as loaded, in one floating-point dtype."""

    dtype: ClassVar[str]
    params_allowed = ()

    def fingerprint(self) -> dict[str, Any]:
        return {"kind": self.kind, "dtype": self.dtype}

    def prepare(self, ctx: ModelContext) -> PreparedModel:
        t0 = time.perf_counter()
        model = ctx.load(self.dtype)
        return PreparedModel(model=model, origin="loaded", prepare_time_s=time.perf_counter() - t0)


@register
class Fp16Variant(FloatVariant):
    kind = "fp16"
    dtype = "fp16"


@register
class Bf16Variant(FloatVariant):
    kind = "bf16"
    dtype = "bf16"


@register
class Fp32Variant(FloatVariant):
    kind = "fp32"
    dtype = "fp32"


# Quantized kinds register themselves on import (they import this module; keep these last).
from pplgate import awq as _awq  # noqa: E402, F401
from pplgate import rtn as _rtn  # noqa: E402, F401
