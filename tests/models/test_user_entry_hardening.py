"""Issue #24 for the ``user`` kind: ``code_paths`` in the code hash, a model on ``meta``, the import error's fix
(a real importable package on a tiny Llama; the kind's other tests are in test_user_entry.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import team_package

from pplgate.errors import VariantError
from pplgate.gate.param_paths import resolve_param_paths
from pplgate.models.registry import make_variant
from pplgate.models.source import ModelSource, load_tokenizer
from pplgate.models.user_entry import code_sha256
from pplgate.models.variant import ModelContext

QUANTIZER = """
import torch


@torch.no_grad()
def halve(model, tokenizer, calibration_texts):
    for name, p in model.named_parameters():
        if ".layers." in name and name.endswith("proj.weight"):
            p.mul_(0.5)
    return model


def on_meta(model, tokenizer, calibration_texts):
    with torch.device("meta"):
        return type(model)(model.config)
"""


@pytest.fixture
def team_pkg(tmp_path, monkeypatch):
    yield from team_package(tmp_path, monkeypatch, "teamq", QUANTIZER)


def _ctx(model_dir: Path, cache_dir: Path, mode: str = "use") -> ModelContext:
    src = ModelSource(str(model_dir))
    return ModelContext(
        source=src, device="cpu", tokenizer=load_tokenizer(src), cache_dir=str(cache_dir), cache_mode=mode
    )


@pytest.mark.parametrize(
    ("params", "match"),
    [
        (
            {"entry": "teamq.nope:f"},
            r"does not import \(ModuleNotFoundError: .*\); .*`pythonpath = \.`.*pip install -e",
        ),
        ({"entry": "teamq.quant:halve", "code_paths": [3]}, r"code_paths must be a list of file or folder paths"),
        (
            {"entry": "teamq.quant:halve", "code_paths": ["/no/such/helpers"]},
            r"code_paths entry '/no/such/helpers' does not exist \(resolved to /no/such/helpers\)",
        ),
    ],
)
def test_bad_entries_fail_at_collection_time_checks(team_pkg, params, match):
    """``collection_check`` (what the collector runs) imports the module and checks the paths; no model."""
    with pytest.raises(VariantError, match=match):
        make_variant("user", params).collection_check()


def test_a_model_on_the_meta_device_is_one_line_naming_the_entry(team_pkg, tiny_dir, tmp_path):
    """Shapes without values: refused before coverage, probes or the cache touch it (no raw traceback)."""
    with pytest.raises(
        VariantError,
        match=r"^user: teamq.quant:on_meta returned a model with \d+ of \d+ tensors on "
        r"the meta device \(e.g. model.embed_tokens.weight\)[^\n]*$",
    ):
        make_variant("user", {"entry": "teamq.quant:on_meta"}).prepare(_ctx(tiny_dir, tmp_path / "c", "off"))


def test_code_paths_cover_a_helper_package_and_a_data_file_outside_the_package(team_pkg, tiny_dir, tmp_path):
    """A helper in another top-level package (or a data file beside it) is hashed when code_paths lists it: a change
    re-quantizes instead of reusing the stale cached model; unlisted, the hash does not see it (documented)."""
    helpers = tmp_path / "src" / "teamhelpers"
    helpers.mkdir()
    (helpers / "__init__.py").write_text("FACTOR = 0.5\n")
    data = tmp_path / "scales.json"
    data.write_text('{"all": 0.5}')
    params = {"entry": "teamq.quant:halve", "code_paths": [str(helpers), str(data)]}
    cache = tmp_path / "cache"
    first = make_variant("user", params).prepare(_ctx(tiny_dir, cache))
    assert first.origin == "quantized" and first.info["code_files"] == 2 + 2  # teamq's 2 files + helper + data
    assert make_variant("user", params).prepare(_ctx(tiny_dir, cache)).origin == "cache"
    plain = code_sha256("teamq.quant")
    (helpers / "__init__.py").write_text("FACTOR = 0.25\n")
    changed = make_variant("user", params).prepare(_ctx(tiny_dir, cache))
    assert changed.origin == "quantized" and changed.info["code_sha256"] != first.info["code_sha256"]
    data.write_text('{"all": 0.25}')
    assert make_variant("user", params).code_hash()[0] != changed.info["code_sha256"]
    assert code_sha256("teamq.quant") == plain  # what is not listed is not covered


def test_code_paths_resolve_against_the_baseline_folder(tmp_path):
    folder = tmp_path / "baselines"
    out = resolve_param_paths({"entry": "a:b", "code_paths": ["../helpers", "/abs/x.json"]}, folder)
    assert out["code_paths"] == [str(tmp_path / "helpers"), "/abs/x.json"]
    assert resolve_param_paths({"code_paths": "scales.json"}, folder)["code_paths"] == str(folder / "scales.json")
