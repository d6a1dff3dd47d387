"""The variant registry: kind names without imports, kinds imported on demand, third-party kinds by entry
point, run-time registration; and the Variant interface's parameter validation shared by every kind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pplgate.errors import VariantError
from pplgate.models import registry
from pplgate.models.registry import (
    _REGISTERED,
    BUILTIN_KINDS,
    ENTRY_POINT_GROUP,
    kind_class,
    known_kinds,
    make_variant,
    register,
)
from pplgate.models.variant import ModelContext, PreparedModel, Variant

SRC = str(Path(__file__).resolve().parents[2] / "src")


def _python(code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([SRC, *sys.path]))
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


def test_float_variants_take_no_params():
    with pytest.raises(VariantError, match=r"'fp16': unknown params \['w_bit'\]; known: none"):
        make_variant("fp16", {"w_bit": 4})


def test_known_kinds_imports_neither_torch_nor_any_kind():
    proc = _python(
        "import sys; from pplgate.models.registry import known_kinds; kinds = known_kinds(); "
        "assert 'torch' not in sys.modules, 'torch'; assert 'awq' not in sys.modules, 'awq'; "
        "assert not [m for m in sys.modules if m.startswith('pplgate.models.') and m != 'pplgate.models.registry']; "
        "print(','.join(kinds))"
    )
    assert proc.returncode == 0, proc.stderr
    assert set(proc.stdout.strip().split(",")) >= {"fp16", "bf16", "fp32", "rtn", "awq", "awq-checkpoint"}


def test_make_variant_imports_only_the_kinds_module():
    proc = _python(
        "import sys; from pplgate.models.registry import make_variant; v = make_variant('fp32'); "
        "print(type(v).__module__, 'pplgate.models.awq' in sys.modules, 'pplgate.models.rtn' in sys.modules)"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["pplgate.models.floating", "False", "False"]


def test_every_builtin_kind_resolves_to_its_class():
    for kind, target in BUILTIN_KINDS.items():
        cls = kind_class(kind)
        assert issubclass(cls, Variant) and cls.kind == kind
        assert f"{cls.__module__}:{cls.__qualname__}" == target


def test_unknown_kind_lists_the_known_ones():
    with pytest.raises(VariantError) as info:
        make_variant("gptq-someday", {})
    msg = str(info.value)
    assert msg.startswith("unknown variant kind 'gptq-someday'; known kinds: ")
    assert msg.endswith(", ".join(known_kinds()))
    for kind in BUILTIN_KINDS:
        assert kind in msg


def _dist(root: Path, name: str, entry_points: str, module: str, body: str) -> None:
    """A real installed distribution: ``<name>-0.1.dist-info`` with METADATA and entry_points.txt, plus its module."""
    info = root / f"{name}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n{textwrap.dedent(entry_points).strip()}\n")
    (root / f"{module}.py").write_text(textwrap.dedent(body))


THIRD_PARTY = """
    import time

    from pplgate.models.variant import PreparedModel, Variant


    class HalfScale(Variant):
        kind = "half-scale"
        params_allowed = ("factor",)

        def fingerprint(self):
            return {"kind": self.kind, "factor": self.params.get("factor", 0.5)}

        def prepare(self, ctx):
            return PreparedModel(model=None, origin="quantized", prepare_time_s=0.0, info={"factor": 0.5})


    class NotAVariant:
        kind = "not-a-variant"


    class Mislabelled(HalfScale):
        kind = "something-else"
"""


def test_third_party_kind_through_an_entry_point(tmp_path, monkeypatch):
    _dist(
        tmp_path,
        "pplgate_half_scale",
        """
        half-scale = pplgate_ep_half_scale:HalfScale
        not-a-variant = pplgate_ep_half_scale:NotAVariant
        mislabelled = pplgate_ep_half_scale:Mislabelled
        broken = pplgate_ep_no_such_module:Thing
        """,
        "pplgate_ep_half_scale",
        THIRD_PARTY,
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    kinds = known_kinds()
    assert {"half-scale", "not-a-variant", "mislabelled", "broken"} <= set(kinds)
    assert "pplgate_ep_half_scale" not in sys.modules  # names only: nothing imported yet
    v = make_variant("half-scale", {"factor": 0.25})
    assert type(v).__name__ == "HalfScale" and v.fingerprint() == {"kind": "half-scale", "factor": 0.25}
    with pytest.raises(VariantError, match=r"'half-scale': unknown params \['bits'\]"):
        make_variant("half-scale", {"bits": 4})
    with pytest.raises(VariantError, match=r"entry point pplgate.variants .*NotAVariant of pplgate_half_scale"):
        make_variant("not-a-variant")
    with pytest.raises(VariantError, match="the class says kind 'something-else', not 'mislabelled'"):
        make_variant("mislabelled")
    with pytest.raises(VariantError, match=r"'broken' .* does not import: ModuleNotFoundError"):
        make_variant("broken")


def test_a_third_party_kind_cannot_replace_a_builtin_one(tmp_path, monkeypatch):
    _dist(tmp_path, "pplgate_fake_fp32", "fp32 = pplgate_ep_fake_fp32:Fake", "pplgate_ep_fake_fp32", "Fake = None\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert known_kinds().count("fp32") == 1
    assert kind_class("fp32").__module__ == "pplgate.models.floating"


def test_runtime_registration_wins_and_is_listed(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTERED", dict(registry._REGISTERED))

    @register
    class Custom(Variant):
        kind = "test-registry-custom"

        def fingerprint(self):
            return {"kind": self.kind}

        def prepare(self, ctx):
            raise AssertionError("not called")

    assert "test-registry-custom" in known_kinds()
    assert type(make_variant("test-registry-custom")) is Custom


def test_ensure_checked_runs_check_once_per_context():
    calls = []

    class Counting(Variant):
        kind = "test-counting"

        def fingerprint(self):
            return {"kind": self.kind}

        def check(self, ctx):
            calls.append(ctx)

        def prepare(self, ctx):
            self.ensure_checked(ctx)
            return PreparedModel(model=None, origin="loaded", prepare_time_s=0.0)

    v = Counting()
    a, b = ModelContext(source=None, device="cpu"), ModelContext(source=None, device="cpu")
    v.ensure_checked(a)
    v.prepare(a)
    v.prepare(a)
    assert calls == [a]
    v.prepare(b)  # another context is checked again
    assert calls == [a, b]


@pytest.mark.parametrize("kind", ["rtn", "awq", "awq-checkpoint"])
def test_dtype_param_is_checked_by_the_policy(kind):
    with pytest.raises(VariantError, match=rf"^{kind}: param dtype must be auto, fp16, bf16 or fp32, got 'int8'$"):
        make_variant(kind, {"dtype": "int8"})
    assert make_variant(kind, {"dtype": "bf16"}).dtype_param == "bf16"


def test_variants_command_lists_every_kind_with_params_and_defaults(capsys, tmp_path):
    from pplgate.cli import main

    out_json = tmp_path / "kinds.json"
    assert main(["variants", "--json", str(out_json)]) == 0
    text = capsys.readouterr().out
    for kind in ("gptq", "llmc-recipe", "hf-checkpoint", "user", "awq", "rtn", "fp16"):
        assert f"\n{kind}  [built-in]" in "\n" + text
    assert "- dampening_frac: number (0.01)" in text and "- sym: boolean (default true)" in text
    rows = {r["kind"]: r for r in json.loads(out_json.read_text())}
    assert set(rows) == set(known_kinds())
    assert {"name": "q_group_size", "type": "integer", "default": 128, "choices": []} in rows["gptq"]["params"]
    assert all(r["summary"] and r["error"] is None for r in rows.values())


def test_variants_command_lists_kinds_registered_at_run_time(capsys):
    from pplgate.cli import main

    @register
    class Listed(Variant):
        kind = "zz-listed"
        summary = "listed"

        def fingerprint(self):
            return {}

        def prepare(self, ctx):
            raise NotImplementedError

    try:
        assert main(["variants"]) == 0
        assert "zz-listed  [registered]\n    listed\n    (no params)" in capsys.readouterr().out
    finally:
        _REGISTERED.pop("zz-listed")
