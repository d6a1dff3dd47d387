"""The Variant interface: parameter validation shared by every kind."""

from __future__ import annotations

import pytest


def test_float_variants_take_no_params():
    from pplgate.errors import VariantError
    from pplgate.models.registry import make_variant

    with pytest.raises(VariantError, match=r"'fp16': unknown params \['w_bit'\]; known: none"):
        make_variant("fp16", {"w_bit": 4})
