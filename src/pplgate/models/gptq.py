"""``gptq``: GPTQ through llm-compressor's ``GPTQModifier``, weight-only integer groups.

The recipe: ``GPTQModifier(targets="Linear", ignore=["lm_head", MoE routers], config_groups={group_0: int
w_bit, strategy group, q_group_size, symmetric sym, actorder}, block_size, dampening_frac)``. Presets
such as ``W4A16`` are fixed at group 128; ``config_groups`` lets a model whose widths 128 does not divide
(SmolLM2: 576) use 64. ``actorder``: ``static`` (llm-compressor's default), ``weight`` or ``none``;
``group`` and ``dynamic`` are refused up front (they fail mid-run on this stack).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pplgate.errors import VariantError
from pplgate.models.llmc import ROUTER_IGNORE, LlmcVariant
from pplgate.models.variant import DTYPE_PARAM, Param

GPTQ_SPEC = (
    Param("w_bit", int, 4),
    Param("q_group_size", int, 128),
    Param("sym", bool, True),
    Param("actorder", str, "static", ("static", "weight", "none"), casefold=True),
    Param("block_size", int, 128),
    DTYPE_PARAM,
)


class GptqVariant(LlmcVariant):
    """GPTQ (llm-compressor). params: ``w_bit`` (4), ``q_group_size`` (128), ``sym`` (true),
    ``actorder`` (static), ``dampening_frac`` (0.01), ``block_size`` (128), ``calibration`` (as for
    ``awq``), ``dtype``, ``quant_dtype`` (the dtype while it calibrates; default ``dtype``)."""

    kind = "gptq"
    summary = "GPTQ through llm-compressor's GPTQModifier (weight-only int groups), stored as compressed-tensors"
    params_spec = GPTQ_SPEC
    params_allowed = (*(p.name for p in GPTQ_SPEC), "dampening_frac", "calibration", "quant_dtype")
    whole_row = "-1 (per channel)"

    def __init__(self, params: Mapping[str, Any] | None = None) -> None:
        super().__init__(params)
        v = self.values
        self.w_bit: int = v["w_bit"]
        self.group_size: int = v["q_group_size"]
        self.sym: bool = v["sym"]
        self.actorder: str = v["actorder"]
        self.block_size: int = v["block_size"]
        damp = self.params.get("dampening_frac", 0.01)
        if isinstance(damp, bool) or not isinstance(damp, (int, float)) or not 0 < damp:
            raise VariantError(f"gptq: param dampening_frac must be a positive number (e.g. 0.01), got {damp!r}")
        self.dampening_frac = float(damp)
        if self.w_bit not in (2, 3, 4, 8):
            raise VariantError(f"gptq: param w_bit must be 2, 3, 4 or 8, got {self.w_bit}")
        if self.group_size != -1 and self.group_size <= 0:
            raise VariantError(f"gptq: param q_group_size must be positive or -1 (per channel), got {self.group_size}")
        if self.block_size <= 0:
            raise VariantError(f"gptq: param block_size must be positive, got {self.block_size}")

    def group_sizes(self) -> set[int]:
        return {self.group_size} if self.group_size > 0 else set()

    def recipe_fingerprint(self) -> dict[str, Any]:
        return {
            "w_bit": self.w_bit,
            "q_group_size": self.group_size,
            "sym": self.sym,
            "actorder": self.actorder,
            "dampening_frac": self.dampening_frac,
            "block_size": self.block_size,
        }

    def recipe(self) -> list[Any]:
        from pplgate.models.compat.llmcompressor import import_llmcompressor

        import_llmcompressor(self.kind)
        from llmcompressor.modifiers.gptq import GPTQModifier

        weights: dict[str, Any] = {"num_bits": self.w_bit, "type": "int", "symmetric": self.sym}
        if self.group_size > 0:
            weights.update(strategy="group", group_size=self.group_size)
        else:
            weights["strategy"] = "channel"
        groups = {"group_0": {"targets": ["Linear"], "weights": weights}}
        return [
            GPTQModifier(
                targets="Linear",
                ignore=list(ROUTER_IGNORE),  # lm_head and MoE routers stay in full precision
                config_groups=groups,
                block_size=self.block_size,
                dampening_frac=self.dampening_frac,
                actorder=None if self.actorder == "none" else self.actorder,
            )
        ]
