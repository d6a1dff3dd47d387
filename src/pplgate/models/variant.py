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
import re
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
    config_loader: Callable[[], Any] | None = None  # the source's config (the Measurer's goes through a cache)
    holder: Callable[[str], torch.nn.Module | None] | None = None  # the float model in dtype if already loaded

    @functools.cached_property
    def torch_device(self) -> torch.device:
        """``device`` resolved once (:func:`pplgate.models.source.resolve_device`)."""
        return resolve_device(self.device)

    def dtype(self, param: str | None) -> str:
        """The compute dtype for a variant's ``dtype`` param on this context's device (``auto``: the default)."""
        return resolve_dtype(param, self.torch_device)

    def config(self) -> Any:
        """The source's ``PretrainedConfig``, read without weights (for checks before any model is loaded)."""
        if self.config_loader is not None:
            return self.config_loader()
        from pplgate.models.layers import load_config

        return load_config(self.source)

    def held(self, dtype: str) -> torch.nn.Module | None:
        """The session's float model in ``dtype`` when it is already loaded (never a load), else None."""
        return self.holder(dtype) if self.holder is not None else None

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


_TYPE_NAMES: dict[type, str] = {bool: "a boolean (true or false)", int: "an integer", str: "a string"}
# words a person means as a boolean; YAML 1.2 reads them as strings ('yes', 'off') or they are quoted ('false')
_BOOL_WORDS = {"true": True, "false": False, "yes": True, "no": False, "on": True, "off": False, "1": True, "0": False}


def _yaml(value: Any) -> str:
    """``value`` as written unquoted in YAML."""
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def _type_fix(value: Any, expected: type, default: Any) -> str:
    if expected is bool:
        meant = _BOOL_WORDS.get(str(value).strip().lower()) if isinstance(value, (str, int, float)) else None
        return f"write {_yaml(meant)}, not {value!r}" if meant is not None else "write true or false"
    if expected is int:
        if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
            return f"write {int(value)}, not {value!r}"
        if isinstance(value, float) and value.is_integer():
            return f"write {int(value)}, not {value!r}"
        return "write a whole number" + (f" (default {default})" if default is not None else "")
    return f"write it quoted, '{_yaml(value)}'" if isinstance(value, (bool, int, float)) else "write a string"


def type_problem(name: str, value: Any, expected: type, default: Any = None) -> str | None:
    """Why ``value`` is not of type ``expected`` (bool, int or str) for param ``name``, naming the fix; None if it is.

    Strict: a bool must be a real bool (not ``'false'``, not 0/1), an int a real int (not a bool, not
    ``'4'``, not 4.0), a str a real str.
    """
    ok = isinstance(value, expected) and (expected is bool or not isinstance(value, bool))
    if ok:
        return None
    fix = _type_fix(value, expected, default)
    return f"param {name} must be {_TYPE_NAMES[expected]}, got {value!r} ({type(value).__name__}); {fix}"


@dataclass(frozen=True)
class Param:
    """One param of a variant kind: its type (bool, int or str), its default and, for strings, the choices.

    ``default=None`` makes the param optional (an absent or ``null`` value reads None); ``casefold``
    matches the choices ignoring case and returns the choice's own spelling.
    """

    name: str
    type: type
    default: Any = None
    choices: tuple[str, ...] = ()
    casefold: bool = False

    def read(self, params: Mapping[str, Any], where: str) -> Any:
        """The value of this param in ``params`` (or the default), checked; :class:`VariantError` names the fix."""
        value = params.get(self.name, self.default)
        if value is None and self.default is None:
            return None
        problem = type_problem(self.name, value, self.type, self.default)
        if problem is None and self.choices:
            found = [c for c in self.choices if c == value or (self.casefold and c.lower() == value.lower())]
            if not found:
                problem = f"param {self.name} must be {_choices(self.choices)}, got {value!r}"
            else:
                value = found[0]
        if problem is not None:
            raise VariantError(f"{where}: {problem}")
        return value


DTYPE_PARAM = Param("dtype", str, "auto", DTYPE_CHOICES)


class Variant(ABC):
    """One way of turning a source model into the model that is measured."""

    kind: ClassVar[str]
    # one line for ``pplgate variants``: what the measured model is
    summary: ClassVar[str] = ""
    # the param names this kind accepts; None: the subclass validates its params itself
    params_allowed: ClassVar[tuple[str, ...] | None] = None
    # typed params, read into ``self.values``; a kind that sets only this accepts exactly these names
    params_spec: ClassVar[tuple[Param, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "params_spec" in cls.__dict__ and "params_allowed" not in cls.__dict__:
            cls.params_allowed = tuple(p.name for p in cls.params_spec)

    def __init__(self, params: Mapping[str, Any] | None = None) -> None:
        if params is not None and not isinstance(params, Mapping):
            raise VariantError(f"variant kind {self.kind!r}: params must be a mapping, got {type(params).__name__}")
        self.params: dict[str, Any] = dict(params or {})
        unknown = [] if self.params_allowed is None else sorted(set(self.params) - set(self.params_allowed))
        if unknown:
            known = ", ".join(self.params_allowed or ()) or "none: this kind takes no params"
            raise VariantError(f"variant kind {self.kind!r}: unknown params {unknown}; known: {known}")
        self.values: dict[str, Any] = {p.name: p.read(self.params, self.kind) for p in self.params_spec}

    def dtype_from_params(self, default: str = "auto") -> str:
        """The ``dtype`` param, checked against the dtype policy's choices (``auto`` or a compute dtype)."""
        return DTYPE_PARAM.read({"dtype": self.params.get("dtype", default)}, self.kind)

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
