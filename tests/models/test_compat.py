"""models/compat/: each library's patches refuse a version they are not written for, before patching anything;
torch.fx's registry entries added during a call are dropped after it."""

from __future__ import annotations

from pathlib import Path

import pytest

from pplgate.errors import VariantError
from pplgate.models.compat import require_version
from pplgate.models.compat.autoawq import best_scale_snapshot_shim, import_autoawq, one_gc_per_load, require_autoawq
from pplgate.models.compat.llmcompressor import (
    awq_resolved_mappings,
    cpu_pin_memory_noop,
    gptq_precision,
    import_llmcompressor,
    in_memory_model_check,
)
from pplgate.models.compat.torch import fx_registry_cleanup


def installed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, dist: str, version: str) -> None:
    """A real ``.dist-info`` of ``dist`` at ``version`` first on ``sys.path``: what importlib.metadata reports."""
    info = tmp_path / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    monkeypatch.syspath_prepend(str(tmp_path))


def test_another_autoawq_is_refused_naming_both_versions_and_the_fix(monkeypatch, tmp_path):
    installed(monkeypatch, tmp_path, "autoawq", "0.2.8")
    fix = "autoawq 0.2.8 is installed, but pplgate's patches of it are written for autoawq 0.2.9"
    for call in (require_autoawq, import_autoawq) if _have("awq") else (require_autoawq,):
        with pytest.raises(VariantError, match=fix) as err:
            call()
        assert "pip install --no-deps autoawq==0.2.9" in str(err.value) and "ci/constraints-cpu.txt" in str(err.value)
        assert "\n" not in str(err.value)
    for shim in (best_scale_snapshot_shim, one_gc_per_load):
        with pytest.raises(VariantError, match=fix), shim():
            pytest.fail("the shim must not be entered")


def test_another_llmcompressor_is_refused_before_any_patch(monkeypatch, tmp_path):
    import torch

    installed(monkeypatch, tmp_path, "llmcompressor", "0.13.0")
    fix = "llmcompressor 0.13.0 is installed, but pplgate's patches of it are written for llmcompressor 0.14.0.1"
    with pytest.raises(VariantError, match=fix) as err:
        import_llmcompressor("gptq")
    assert "pip install 'pplgate[llmcompressor]'" in str(err.value)
    for shim in (
        in_memory_model_check,
        cpu_pin_memory_noop,
        lambda: gptq_precision(torch.float64),
        awq_resolved_mappings,
    ):
        with pytest.raises(VariantError, match=fix), shim():
            pytest.fail("the shim must not be entered")


def test_the_pinned_version_passes_and_a_missing_library_is_left_to_its_import(monkeypatch, tmp_path):
    installed(monkeypatch, tmp_path, "autoawq", "0.2.9")
    require_autoawq()
    require_version("pplgate-no-such-distribution", "1.0", "pip install nothing")


def test_fx_registry_cleanup_drops_what_the_call_added_and_keeps_the_rest():
    from torch.fx import _symbolic_trace as st

    before = dict(st._wrapped_fns_to_patch)
    namespace: dict = {"__name__": "pplgate_test_traced"}
    with fx_registry_cleanup():
        exec("import torch.fx\ntorch.fx.wrap('len')", namespace)  # what a traced module's wrap() registers
        assert (id(namespace), "len") in st._wrapped_fns_to_patch
    assert st._wrapped_fns_to_patch == before


def test_fx_registry_cleanup_refuses_a_registry_it_does_not_know(monkeypatch):
    from torch.fx import _symbolic_trace as st

    monkeypatch.setattr(st, "_wrapped_fns_to_patch", [])
    with pytest.raises(VariantError, match=r"_wrapped_fns_to_patch is list, not the dict .*\(torch 2\.13\.0"):
        with fx_registry_cleanup():
            pytest.fail("the cleanup must not be entered")


def _have(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None
