"""The YAML node checks every schema error goes through."""

from __future__ import annotations

from pathlib import Path

import pytest

from pplgate.errors import BaselineError
from pplgate.gate.store import parse_text
from pplgate.gate.validator import NAME_RE, Validator

V = Validator(Path("b.yaml"))
DOC = parse_text(Path("b.yaml"), "top:\n  n: 3\n  flag: true\n  s: text\n  list: [1]\n  'bad name': {}\n")
NODE = DOC["top"]


def _err(fn, *args):
    with pytest.raises(BaselineError) as ei:
        fn(*args)
    return ei.value


def test_err_names_file_keypath_and_line():
    e = _err(V.err, "top.n", "too big", NODE, "n")
    assert str(e) == "b.yaml:2: top.n: too big" and e.line == 2 and e.keypath == "top.n"
    e = _err(V.err, "", "the file is empty")
    assert str(e) == "b.yaml: <top>: the file is empty" and e.line is None


def test_typed_reads():
    assert V.integer(NODE, "n", "top", None, 1) == 3
    assert V.integer(NODE, "missing", "top", 7, 1) == 7 and V.integer(NODE, "missing", "top", None, 1) is None
    assert "expected an integer >= 1, got True" in str(_err(V.integer, NODE, "flag", "top", None, 1))
    assert "expected an integer >= 4, got 3" in str(_err(V.integer, NODE, "n", "top", None, 4))
    assert V.number(NODE, "n", "top") == 3.0 and V.number(NODE, "missing", "top") is None
    assert "non-negative number, got True" in str(_err(V.number, NODE, "flag", "top"))
    assert V.string(NODE, "s", "top") == "text" and V.string(NODE, "missing", "top", optional=True) is None
    assert "top.n: expected a non-empty string, got 3" in str(_err(V.string, NODE, "n", "top"))
    assert V.choice(NODE, "s", "top", ("text", "other"), None) == "text"
    assert V.choice(NODE, "missing", "top", ("a", "b"), "b") == "b"
    assert (
        str(_err(V.choice, NODE, "s", "top", ("a", "b"), None)) == "b.yaml:4: top.s: expected one of a, b, got 'text'"
    )


def test_mappings_and_keys():
    assert V.mapping(NODE, "top") is NODE
    assert "top.list: expected a mapping, got list" in str(_err(V.mapping, NODE["list"], "top.list", NODE, "list"))
    e = _err(V.keys, NODE, {"n", "flag"}, "top")
    assert "top.s: unknown key 's' (allowed: flag, n)" in str(e) and e.line == 4
    V.keys(NODE, {"n", "flag", "s", "list", "bad name"}, "top", required=("n",))
    assert "top.x: missing required key" in str(_err(V.keys, NODE, set(NODE), "top", ("x",)))
    assert "top.bad name: profile name 'bad name' may only contain" in str(
        _err(V.named_mappings, {"bad name": {}}, "profile", "top")
    )
    assert V.named_mappings(DOC, "profile", "") == {"top": ("top", NODE)}


def test_two_keys_naming_the_same_test_are_an_error():
    doc = parse_text(Path("b.yaml"), "p:\n  1: {a: 1}\n  '1': {b: 2}\n")
    e = _err(V.named_mappings, doc["p"], "profile", "p")
    assert str(e) == "b.yaml:3: p.1: profile name '1' is given twice (as 1 at line 2 and as '1'); rename one"


@pytest.mark.parametrize(("name", "ok"), [("fp32", True), ("awq-w4g64", True), ("a.b+c_d", True), ("a b", False)])
def test_name_re(name, ok):
    assert bool(NAME_RE.match(name)) is ok
