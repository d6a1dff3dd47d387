"""Variant kinds by name: a small map to ``"module:Class"``, imported only when a kind is used.

Three sources, looked up in this order:

1. kinds registered at run time with :func:`register` (a test's conftest, a script);
2. pplgate's own kinds, :data:`BUILTIN_KINDS`; adding a kind to pplgate is a module under
   ``pplgate/models/`` with a :class:`~pplgate.models.variant.Variant` subclass, plus one line here;
3. third-party kinds, from the entry-point group ``pplgate.variants`` (as pytest plugins use
   ``pytest11``): in the distribution's ``pyproject.toml``::

       [project.entry-points."pplgate.variants"]
       my-quant = "my_package.pplgate_kind:MyQuantVariant"

   The entry point's name is the kind's name and must equal the class's ``kind``. A third-party kind
   cannot replace a built-in one (the built-in wins).

:func:`known_kinds` reads names only: it imports neither torch nor any kind's module (nor AutoAWQ), so
parsing a baseline file stays cheap. :func:`make_variant` imports the one module it needs.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from importlib import metadata
from typing import TYPE_CHECKING, Any

from pplgate.errors import VariantError

if TYPE_CHECKING:
    from pplgate.models.variant import Variant

ENTRY_POINT_GROUP = "pplgate.variants"

BUILTIN_KINDS: dict[str, str] = {
    "fp16": "pplgate.models.floating:Fp16Variant",
    "bf16": "pplgate.models.floating:Bf16Variant",
    "fp32": "pplgate.models.floating:Fp32Variant",
    "rtn": "pplgate.models.rtn:RtnVariant",
    "awq": "pplgate.models.awq:AwqVariant",
    "awq-checkpoint": "pplgate.models.awq:AwqCheckpointVariant",
    "gptq": "pplgate.models.gptq:GptqVariant",
    "llmc-recipe": "pplgate.models.llmc_recipe:LlmcRecipeVariant",
    "hf-checkpoint": "pplgate.models.hf_checkpoint:HfCheckpointVariant",
    "user": "pplgate.models.user_entry:UserEntryVariant",
    "transformers": "pplgate.models.hf_quantizer:HfQuantizerVariant",
    "hqq": "pplgate.models.hqq:HqqVariant",
}

_REGISTERED: dict[str, type[Variant]] = {}


def register(cls: type[Variant]) -> type[Variant]:
    """Class decorator adding a kind at run time (it takes precedence over the other sources)."""
    _REGISTERED[cls.kind] = cls
    return cls


def entry_point_kinds() -> dict[str, metadata.EntryPoint]:
    """The installed distributions' ``pplgate.variants`` entry points, by kind name (nothing imported)."""
    return {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def known_kinds() -> list[str]:
    """Every kind name :func:`make_variant` accepts, sorted (imports no kind)."""
    return sorted({*BUILTIN_KINDS, *entry_point_kinds(), *_REGISTERED})


def _import_target(target: str) -> Any:
    module, _, attr = target.partition(":")
    obj: Any = importlib.import_module(module)
    for part in attr.split(".") if attr else ():
        obj = getattr(obj, part)
    return obj


def kind_class(kind: str) -> type[Variant]:
    """The :class:`~pplgate.models.variant.Variant` subclass of ``kind``, its module imported on demand."""
    if kind in _REGISTERED:
        return _REGISTERED[kind]
    target = BUILTIN_KINDS.get(kind)
    if target is not None:
        cls = _import_target(target)
        where = f"built-in kind {kind!r} ({target})"
    else:
        ep = entry_point_kinds().get(kind)
        if ep is None:
            raise VariantError(f"unknown variant kind {kind!r}; known kinds: {', '.join(known_kinds())}")
        dist = getattr(getattr(ep, "dist", None), "name", None)
        where = f"variant kind {kind!r} (entry point {ENTRY_POINT_GROUP} {ep.value}" + (f" of {dist})" if dist else ")")
        try:
            cls = ep.load()
        except Exception as exc:
            raise VariantError(f"{where} does not import: {type(exc).__name__}: {exc}") from exc
    from pplgate.models.variant import Variant

    if not (isinstance(cls, type) and issubclass(cls, Variant)):
        raise VariantError(f"{where} is not a pplgate.models.variant.Variant subclass: {cls!r}")
    if getattr(cls, "kind", None) != kind:
        raise VariantError(f"{where}: the class says kind {getattr(cls, 'kind', None)!r}, not {kind!r}")
    return cls


def make_variant(kind: str, params: Mapping[str, Any] | None = None) -> Variant:
    """Instantiate the variant ``kind`` with ``params`` (an unknown kind lists the known ones)."""
    return kind_class(kind)(params)
