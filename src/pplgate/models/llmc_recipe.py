"""``llmc-recipe``: any llm-compressor recipe, given inline in the baseline or as a recipe YAML file.

Inline, ``recipe`` is a list of one-key mappings ``{ModifierName: {args}}`` run in order, e.g. AWQ::

    recipe:
      - AWQModifier: {n_grid: 20}
      - QuantizationModifier:
          targets: [Linear]
          ignore: [lm_head]
          config_groups: {group_0: {targets: [Linear], weights: {num_bits: 4, type: int,
                          strategy: group, group_size: 64, symmetric: false}}}

(RTN is the ``QuantizationModifier`` alone, with no calibration.) ``recipe_file`` names a YAML file in
llm-compressor's nested form (``<x>_stage: {<x>_modifiers: {...}}``); its content hash, not its path,
goes into the fingerprint. ``calibration`` (as for ``awq``; default ``$PPLGATE_CALIBRATION``, else pileval)
is used when a modifier calibrates on data (AWQ, GPTQ, ...); a recipe without such a modifier runs without data.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pplgate.errors import VariantError
from pplgate.models.compat.llmcompressor import recipe_from_file, recipe_from_list, recipe_group_sizes
from pplgate.models.hashing import sha256_file
from pplgate.models.llmc import LlmcVariant

# modifiers that calibrate on data (oneshot without a dataset fails or does nothing useful)
DATA_MODIFIERS = {
    "AWQModifier",
    "GPTQModifier",
    "SmoothQuantModifier",
    "SparseGPTModifier",
    "AutoRoundModifier",
    "WandaPruningModifier",
    "SpinQuantModifier",
}
RECIPE_PARAMS = ("recipe", "recipe_file", "calibration", "dtype", "quant_dtype", "require_all_linears")


class LlmcRecipeVariant(LlmcVariant):
    """An llm-compressor recipe. params: ``recipe`` (inline list) or ``recipe_file`` (path), ``calibration``,
    ``dtype``, ``require_all_linears`` (true: fail when a decoder Linear stays unquantized)."""

    kind = "llmc-recipe"
    summary = "any llm-compressor recipe (AWQ, RTN, GPTQ, ...), inline or a YAML file, stored as compressed-tensors"
    params_allowed = RECIPE_PARAMS

    def __init__(self, params: Mapping[str, Any] | None = None) -> None:
        raw = dict(params or {})
        inline, path = raw.get("recipe"), raw.get("recipe_file")
        if (inline is None) == (path is None):
            raise VariantError(
                "llmc-recipe: give exactly one of params.recipe (an inline list of "
                "{ModifierName: {args}}) and params.recipe_file (a recipe YAML path)"
            )
        if path is not None and (not isinstance(path, str) or not path):
            raise VariantError(f"llmc-recipe: recipe_file must be a file path, got {path!r}")
        if inline is not None and (not isinstance(inline, list) or not inline):
            raise VariantError(
                f"llmc-recipe: recipe must be a non-empty list of {{ModifierName: {{args}}}} mappings, got {inline!r}"
            )
        self.inline: list[Any] | None = inline
        self.recipe_path: Path | None = None if path is None else Path(os.path.abspath(Path(path).expanduser()))
        all_linears = raw.get("require_all_linears", True)
        if not isinstance(all_linears, bool):
            raise VariantError(f"llmc-recipe: require_all_linears must be true or false, got {all_linears!r}")
        self.all_linears = all_linears
        super().__init__(params)

    @functools.cached_property
    def _file_data(self) -> Any:
        import yaml

        if self.recipe_path is None:
            return None
        if not self.recipe_path.is_file():
            raise VariantError(f"llmc-recipe: recipe_file {self.recipe_path} does not exist")
        try:
            return yaml.safe_load(self.recipe_path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            raise VariantError(f"llmc-recipe: recipe file {self.recipe_path} does not parse: {exc}") from exc

    def _modifier_names(self) -> set[str]:
        data = self.inline if self.inline is not None else self._file_data
        names: set[str] = set()

        def walk(v: Any) -> None:
            if isinstance(v, Mapping):
                for k, sub in v.items():
                    if isinstance(k, str) and k.endswith("Modifier"):
                        names.add(k)
                    walk(sub)
            elif isinstance(v, list):
                for sub in v:
                    walk(sub)

        walk(data)
        return names

    def needs_calibration(self) -> bool:
        return bool(self._modifier_names() & DATA_MODIFIERS)

    def ignore_patterns(self) -> list[str]:
        """Every ``ignore:`` entry of the recipe's modifiers (names or ``re:`` patterns), besides the routers."""
        found: list[str] = []

        def walk(v: Any) -> None:
            if isinstance(v, Mapping):
                for k, sub in v.items():
                    if k == "ignore":
                        found.extend([sub] if isinstance(sub, str) else [x for x in sub or () if isinstance(x, str)])
                    else:
                        walk(sub)
            elif isinstance(v, list):
                for sub in v:
                    walk(sub)

        walk(self.inline if self.inline is not None else self._file_data)
        return [*super().ignore_patterns(), *found]

    def missing_fix(self) -> str:
        return (
            "widen the recipe's targets, list those modules in its ignore: to keep them in full precision on purpose, "
            "or set require_all_linears: false"
        )

    def requires_every_linear(self) -> bool:
        return self.all_linears

    def group_sizes(self) -> set[int]:
        return recipe_group_sizes(self.inline if self.inline is not None else self._file_data)

    def recipe_fingerprint(self) -> dict[str, Any]:
        if self.inline is not None:
            return {"recipe": self.inline}
        self._file_data  # noqa: B018 - exists and parses
        return {"recipe_file": self.recipe_path.name, "recipe_sha256": sha256_file(self.recipe_path)}

    def recipe(self) -> Any:
        if self.inline is not None:
            return recipe_from_list(self.inline, self.kind)
        return recipe_from_file(self.recipe_path, self.kind)
