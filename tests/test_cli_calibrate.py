"""``pplgate calibrate``: a real tiny Llama measured N times (caches off), proposals, ``--update-baselines``."""

from __future__ import annotations

import contextlib
import datetime
import io
import json
import re
from pathlib import Path

import pytest
from support import gate_env, run_cli, tiny_baseline

from pplgate.cli import main
from pplgate.gate.spec import parse_baseline
from pplgate.models.registry import known_kinds
from pplgate.provenance import cpu_model

VARIANTS = """
fp32:
  kind: fp32
  tolerance:
    - {type: absolute, max_delta: 0.001}   # fp32 on CPU is deterministic
rtn:
  kind: rtn
  params: {w_bit: 4, q_group_size: 32}
  reference: fp32
  tolerance:
    # widths by hand
    - {type: absolute, max_delta: 0.001}
    - {type: relational, ref: fp32, max_rel: 1.0}
    - {type: kld, max_delta: 0.0001}
    - {type: top1, max_delta: 0.001}
"""


@pytest.fixture(scope="module")
def calibrated(tiny_model: Path, tmp_path_factory) -> tuple[str, Path, dict, str]:
    """One real ``calibrate -n 2 --json --update-baselines`` run: (the file before, the file, the JSON, stdout)."""
    d = tmp_path_factory.mktemp("cal")
    path, out = d / "tiny.yaml", d / "cal.json"
    before = tiny_baseline(tiny_model, VARIANTS, max_windows=2)
    path.write_text(before)
    stdout = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(stdout):
        gate_env(mp)
        rc = main(["calibrate", str(path), "-n", "2", "--json", str(out), "--update-baselines"])
    assert rc == 0, stdout.getvalue()
    return before, path, json.loads(out.read_text()), stdout.getvalue()


def test_deterministic_entries_get_the_rounding_floor(calibrated):
    _, _, doc, stdout = calibrated
    props = {(p["entry"], p["rule"]): p for p in doc["proposals"]}
    assert len(doc["runs"]) == 2 and doc["runs"][0]["rtn"]["ppl"] == doc["runs"][1]["rtn"]["ppl"]
    assert all(p["deterministic"] and p["range"] == 0 and p["n"] == 2 for p in props.values())
    assert props[("fp32", 0)]["proposed"] == 1e-6 and props[("rtn", 0)]["proposed"] == 1e-6  # ppl: 6 decimals
    assert props[("rtn", 3)]["proposed"] == 1e-6  # top-1: 6 decimals
    kld = doc["runs"][0]["rtn"]["kld"]
    assert props[("rtn", 2)]["proposed"] == pytest.approx(props[("rtn", 2)]["floor"]) and kld > 0
    assert props[("rtn", 2)]["floor"] < kld * 1e-5  # 7 significant digits of the KLD
    assert props[("rtn", 1)]["proposed"] == 1.0 and props[("rtn", 1)]["verdict"].startswith("ok (headroom")
    assert props[("fp32", 0)]["verdict"] == "looser than 10x the spread"
    assert "deterministic over 2 runs" in stdout and "max_delta 0.001" in stdout


def test_update_writes_proposals_and_comments_and_nothing_else(calibrated):
    before, path, doc, _ = calibrated
    after = path.read_text()
    comments = [ln for ln in after.splitlines() if ln.lstrip().startswith("# calibrated")]
    assert len(comments) == 5
    today = datetime.date.today().isoformat()
    assert all(today in c and cpu_model() in c and "over 2 runs" in c for c in comments)
    kept = [ln for ln in after.splitlines() if not ln.lstrip().startswith("# calibrated")]
    changed = [(old, new) for old, new in zip(before.splitlines(), kept, strict=True) if old != new]
    assert len(changed) == 4  # the 4 width rules; the relational limit kept its bound
    for old, new in changed:
        assert re.sub(r"max_delta: [0-9.]+", "max_delta: N", old) == re.sub(r"max_delta: [0-9.]+", "max_delta: N", new)
    spec = parse_baseline(path, known_kinds=known_kinds())
    rules = spec.profiles["cpu"].variants["rtn"].rules
    assert rules[0].max_delta == 1e-6 and rules[1].max_rel == 1.0
    assert rules[2].max_delta == next(p["proposed"] for p in doc["proposals"] if (p["entry"], p["rule"]) == ("rtn", 2))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-n", "1"], "a spread needs at least 2 runs; pass e.g. -n 3"),
        (["-n", "2", "-k", "nope"], "no entry 'nope' in profile cpu; -k takes one of: fp32, rtn"),
        (["-n", "2", "--profile", "gpu"], "no profile 'gpu'; --profile takes one of: cpu"),
    ],
)
def test_bad_input_is_refused_before_measuring(tiny_model, tmp_path, capsys, args, message):
    path = tmp_path / "tiny.yaml"
    path.write_text(tiny_baseline(tiny_model, VARIANTS))
    rc, out, err = run_cli(["calibrate", str(path), *args], capsys)
    assert rc == 2 and message in err and "run 1/" not in out
