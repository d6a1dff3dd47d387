"""The baseline store: updates rewrite only the measured blocks; reads are bounded and safe."""

from __future__ import annotations

import math
import os
import string
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pplgate.errors import BaselineError
from pplgate.gate.store import (
    MAX_FILE_BYTES,
    EntryUpdate,
    apply_updates,
    parse_text,
    plain,
    read_raw,
    write_updates,
)

DOC = """\
# top comment
schema_version: 1
model:
  name: tiny   # a name
  source: x
profiles:
  cpu:
    device: cpu
    max_windows: null
    variants:
      a:
        kind: fp32
        tolerance: [{type: absolute, max_delta: 0.1}]
        fingerprint:
          n_tokens: 1
        recorded:
          ppl: 10.0
          window_nlls: [2.302585]
      # comment before b
      b:
        kind: fp16
        tolerance:
          - {type: absolute, max_delta: 0.1}   # keep me
      # trailing comment of the variants
"""


def _upd(variant: str = "a", ppl: float = 12.5, fp: dict | None = None) -> EntryUpdate:
    return EntryUpdate(
        profile="cpu",
        variant=variant,
        fingerprint=fp or {"n_tokens": 2, "variant": {"kind": "fp32"}},
        ppl=ppl,
        window_nlls=[math.log(ppl)],
        provenance={"date": "today", "torch": "2.13.0"},
    )


def _entry(text: str, variant: str) -> dict:
    return plain(parse_text(Path("x.yaml"), text))["profiles"]["cpu"]["variants"][variant]


def test_update_replaces_only_the_measured_blocks():
    new, rows = apply_updates(Path("x.yaml"), DOC, [_upd("a")])
    assert rows == [{"profile": "cpu", "variant": "a", "old": 10.0, "new": 12.5, "applied": True}]
    head, tail = DOC.split("        fingerprint:\n")[0], DOC.split("          window_nlls: [2.302585]\n")[1]
    assert new.startswith(head) and new.endswith(tail)
    assert _entry(new, "a")["recorded"]["ppl"] == 12.5
    assert "max_windows: null" in new  # ruamel would have written "max_windows:"


def test_missing_blocks_are_inserted_before_trailing_comments():
    new, rows = apply_updates(Path("x.yaml"), DOC, [_upd("b")])
    assert rows[0]["old"] is None and rows[0]["applied"]
    before, after = DOC.split("      # trailing comment of the variants\n")
    assert new.startswith(before) and new.endswith("      # trailing comment of the variants\n")
    b = _entry(new, "b")
    assert list(b) == ["kind", "tolerance", "fingerprint", "recorded"]
    assert b["fingerprint"]["n_tokens"] == 2 and b["recorded"]["window_nlls"] == [round(math.log(12.5), 6)]


def test_recorded_only_gets_its_fingerprint_in_front():
    doc = DOC.replace("        fingerprint:\n          n_tokens: 1\n", "")
    new, _ = apply_updates(Path("x.yaml"), doc, [_upd("a")])
    assert list(_entry(new, "a")) == ["kind", "tolerance", "fingerprint", "recorded"]


def test_unknown_entry_is_not_applied():
    new, rows = apply_updates(Path("x.yaml"), DOC, [_upd("zzz")])
    assert new == DOC and rows[0]["applied"] is False


@pytest.mark.parametrize(
    ("newline", "unit"), [("\r\n", 2), ("\n", 4), ("\r\n", 4), ("\n", 3)], ids=["crlf", "indent4", "crlf4", "indent3"]
)
def test_line_endings_and_indentation_are_kept(newline, unit):
    doc = "".join(
        " " * (unit * (len(line) - len(line.lstrip(" "))) // 2) + line.lstrip(" ") + newline
        for line in DOC.splitlines()
    )
    new, _ = apply_updates(Path("x.yaml"), doc, [_upd("a"), _upd("b", 9.0)])
    assert new.count("\r\n") == (new.count("\n") if newline == "\r\n" else 0)
    for keep in doc.split(newline):
        if "fingerprint" in keep or "recorded" in keep or "n_tokens" in keep or "ppl" in keep or "nlls" in keep:
            continue
        assert keep in new
    assert " " * (4 * unit) + "fingerprint:" in new and " " * (5 * unit) + "ppl: 12.5" in new


def test_no_final_newline_is_kept():
    doc = DOC.rstrip("\n")
    new, _ = apply_updates(Path("x.yaml"), doc, [_upd("a")])
    assert not new.endswith("\n") and new.endswith("# trailing comment of the variants")


def test_flow_style_entry_is_refused_with_the_fix():
    doc = DOC.replace(
        "      b:\n        kind: fp16\n        tolerance:\n          - {type: absolute, max_delta: 0.1}   # keep me\n",
        "      b: {kind: fp16, tolerance: [{type: absolute, max_delta: 0.1}]}\n",
    )
    with pytest.raises(BaselineError, match="flow style.*block style"):
        apply_updates(Path("x.yaml"), doc, [_upd("b")])


def test_symlinked_file_stays_a_link_and_its_target_is_updated(tmp_path):
    target = tmp_path / "real" / "tiny.yaml"
    target.parent.mkdir()
    target.write_text(DOC)
    link = tmp_path / "tiny.yaml"
    link.symlink_to(target)
    write_updates(link, [_upd("a")])
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert _entry(target.read_text(), "a")["recorded"]["ppl"] == 12.5


def test_stale_temp_files_of_killed_writers_are_removed(tmp_path):
    p = tmp_path / "tiny.yaml"
    p.write_text(DOC)
    stale = tmp_path / ".tiny.yaml.abc123.tmp"
    stale.write_text("half a file")
    other = tmp_path / ".other.yaml.abc.tmp"
    other.write_text("not ours")
    write_updates(p, [_upd("a")])
    assert not stale.exists() and other.exists()


def test_no_lock_file_lands_beside_the_baselines(tmp_path):
    """``git add -A`` would commit it: the lock lives in the temp directory, one per resolved file."""
    from pplgate.gate.store import lock_path

    p = tmp_path / "tiny.yaml"
    p.write_text(DOC)
    write_updates(p, [_upd("a")])
    assert sorted(x.name for x in tmp_path.iterdir()) == ["tiny.yaml"]
    (tmp_path / "link.yaml").symlink_to(p)
    assert lock_path(tmp_path / "link.yaml") == lock_path(p) and not lock_path(p).startswith(str(tmp_path))


def test_write_keeps_crlf_bytes_on_disk(tmp_path):
    p = tmp_path / "tiny.yaml"
    p.write_bytes(DOC.replace("\n", "\r\n").encode())
    write_updates(p, [_upd("a")])
    raw = p.read_bytes()
    assert raw.count(b"\r\n") == raw.count(b"\n")


def test_billion_laughs_is_refused_quickly(tmp_path):
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 12)]
    p = tmp_path / "bomb.yaml"
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(BaselineError, match=r"bomb\.yaml:1: <top>: YAML anchor &a0 is not allowed"):
        read_raw(p)


def test_a_plain_alias_is_refused_too(tmp_path):
    p = tmp_path / "alias.yaml"
    p.write_text("x: &x 1\ny: *x\n")
    with pytest.raises(BaselineError, match="not allowed in baseline files"):
        read_raw(p)


def test_oversized_file_is_refused(tmp_path):
    p = tmp_path / "big.yaml"
    p.write_text("# " + "x" * MAX_FILE_BYTES + "\n")
    with pytest.raises(BaselineError, match=f"limited to {MAX_FILE_BYTES:,} bytes"):
        read_raw(p)


def test_non_utf8_byte_names_line_and_offset(tmp_path):
    p = tmp_path / "latin1.yaml"
    p.write_bytes(b"schema_version: 1\n# caf\xe9\n")
    with pytest.raises(BaselineError, match=r"latin1\.yaml:2: <top>: not UTF-8: byte 0xe9 at offset 23"):
        read_raw(p)


# --------------------------------------------------------------------------- property: untouched bytes stay


_COMMENT = st.text(alphabet=string.ascii_letters + string.digits + " .,:-_()", max_size=20)
_SCALAR = st.sampled_from(["fp32", "'fp32'", '"fp32"'])


@st.composite
def _documents(draw):
    """A random valid baseline text as segments; the target entry's measured blocks are tagged."""
    nl = draw(st.sampled_from(["\n", "\r\n"]))
    u = draw(st.sampled_from([2, 3, 4]))
    segs: list[tuple[str, str | None]] = []

    def add(col: int, text: str, tag: str | None = None) -> None:
        segs.append((" " * col + text + nl, tag))

    def comment(col: int) -> None:
        if draw(st.booleans()):
            add(col, "# " + draw(_COMMENT))

    comment(0)
    add(0, "schema_version: 1")
    add(0, "model:")
    add(u, "name: tiny" + draw(st.sampled_from(["", "  # name"])))
    add(u, "source: x")
    add(0, "profiles:")
    profiles = draw(st.integers(1, 2))
    counts = [draw(st.integers(1, 3)) for _ in range(profiles)]
    target = (draw(st.integers(0, profiles - 1)), None)
    target = (target[0], draw(st.integers(0, counts[target[0]] - 1)))
    for pi in range(profiles):
        comment(u)
        add(u, f"p{pi}:")
        add(2 * u, "device: cpu")
        if draw(st.booleans()):
            add(2 * u, draw(st.sampled_from(["max_windows: null", "max_windows:", "max_windows: 4"])))
        add(2 * u, "variants:")
        for vi in range(counts[pi]):
            tag = (pi, vi) == target
            comment(3 * u)
            add(3 * u, f"v{vi}:")
            c = 4 * u
            add(c, "kind: " + draw(_SCALAR) + draw(st.sampled_from(["", "   # kind"])))
            measured_first = draw(st.booleans())
            blocks = []
            if draw(st.booleans()):
                blocks.append([("fingerprint:", "fp"), ("n_tokens: 7", "fp"), ("variant: {kind: fp32}", "fp")])
            if draw(st.booleans()):
                blocks.append([("recorded:", "rec"), ("ppl: 9.5", "rec"), ("window_nlls: [2.25, 2.25]", "rec")])

            def emit_blocks(blocks=blocks, c=c, tag=tag) -> None:
                for block in blocks:
                    for i, (text, btag) in enumerate(block):
                        add(c if i == 0 else c + u, text, btag if tag else None)

            if measured_first:
                emit_blocks()
            if draw(st.booleans()):
                add(c, "tolerance: [{type: absolute, max_delta: 0.1}]")
            else:
                add(c, "tolerance:")
                add(
                    c + draw(st.sampled_from([0, u])),
                    "- {type: absolute, max_delta: 0.1}" + draw(_COMMENT.map(lambda s: f"  # {s}" if s else "")),
                )
            if not measured_first:
                emit_blocks()
            if draw(st.booleans()):
                add(c + draw(st.sampled_from([0, u])), "# after the entry " + draw(_COMMENT))
    comment(0)
    return segs, target


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_documents(), st.floats(1.5, 1e4))
def test_property_update_one_entry_leaves_every_other_byte(doc, ppl):
    segs, (pi, vi) = doc
    text = "".join(s for s, _ in segs)
    upd = EntryUpdate(f"p{pi}", f"v{vi}", {"n_tokens": 8}, ppl, [math.log(ppl)] * 2, {"date": "d"})
    new, rows = apply_updates(Path("x.yaml"), text, [upd])
    assert rows[0]["applied"]
    # every untagged segment survives, in order and byte for byte; tagged ones were rewritten
    pos = 0
    for seg, tag in segs:
        if tag is None:
            at = new.find(seg, pos)
            assert at >= 0, (seg, new)
            if pos == 0 and at != 0:
                assert segs[0][1] is not None
            pos = at + len(seg)
    before, after = plain(parse_text(Path("x.yaml"), text)), plain(parse_text(Path("x.yaml"), new))
    entry = after["profiles"][f"p{pi}"]["variants"][f"v{vi}"]
    assert entry["recorded"]["ppl"] == round(ppl, 6) and entry["fingerprint"] == {"n_tokens": 8}
    del entry["recorded"], entry["fingerprint"]
    old = before["profiles"][f"p{pi}"]["variants"][f"v{vi}"]
    old.pop("recorded", None), old.pop("fingerprint", None)
    assert after == before
    if "\r\n" in text:
        assert new.count("\r\n") == new.count("\n")
    else:
        assert "\r" not in new


# --------------------------------------------------------------------------- whole files (moved from test_baselines)

WHOLE = """\
# top comment
schema_version: 1
model:
  name: m
  source: some/hub-id   # a hub id
profiles:
  cpu:
    device: cpu
    seqlen: 128
    variants:
      fp32:
        kind: fp32
        tolerance:
          - {type: absolute, max_delta: 0.01}   # keep me
      fp16:
        kind: fp16
        tolerance:
          - {type: relational, ref: fp32, max_delta: 0.5}
          - {type: relative, max_rel: 0.01, direction: worse}
      # trailing comment of the variants
"""


def _parse_whole(p: Path):
    from pplgate.gate.spec import parse_baseline

    return parse_baseline(p, known_kinds=("fp16", "fp32"))


def _whole_upd(variant: str, ppl: float) -> EntryUpdate:
    return EntryUpdate(
        profile="cpu",
        variant=variant,
        fingerprint={"n_tokens": 5, "variant": {"kind": variant}},
        ppl=ppl,
        window_nlls=[math.log(ppl)] * 3,
        provenance={"date": "today"},
    )


def test_write_updates_preserves_comments_and_order(tmp_path):
    p = tmp_path / "m.yaml"
    p.write_text(WHOLE)
    rows = write_updates(p, [_whole_upd("fp16", 12.3456789)])
    assert rows == [{"profile": "cpu", "variant": "fp16", "old": None, "new": 12.3456789, "applied": True}]
    text = p.read_text()
    for keep in ["# top comment", "# a hub id", "# keep me", "# trailing comment of the variants"]:
        assert keep in text
    assert text.index("fp32:") < text.index("fp16:") < text.index("recorded:")
    assert text.index("recorded:") < text.index("# trailing comment of the variants")
    assert "window_nlls: [2.513306, 2.513306, 2.513306]" in text
    spec = _parse_whole(p)
    assert spec.profiles["cpu"].variants["fp16"].recorded.ppl == pytest.approx(12.345679)
    rows = write_updates(p, [_whole_upd("fp16", 13.0)])
    assert rows[0]["old"] == pytest.approx(12.345679)
    assert p.read_text().count("recorded:") == 1 and "# trailing comment of the variants" in p.read_text()
    assert not list(tmp_path.glob(".*.tmp"))


def _whole_writer(args):
    path, variant, ppl = args
    write_updates(path, [_whole_upd(variant, ppl)])


def test_concurrent_writers_merge(tmp_path):
    import multiprocessing as mp

    text = WHOLE
    for name in ("a", "b", "c", "d"):
        text = text.replace(
            "      # trailing comment",
            f"      {name}:\n        kind: fp32\n        tolerance: [{{type: absolute, "
            f"max_delta: 1}}]\n      # trailing comment",
        )
    p = tmp_path / "m.yaml"
    p.write_text(text)
    jobs = [(str(p), v, 10.0 + i) for i, v in enumerate(["fp32", "fp16", "a", "b", "c", "d"])]
    with mp.get_context("spawn").Pool(3) as pool:
        pool.map(_whole_writer, jobs)
    spec = _parse_whole(p)
    got = {v: s.recorded.ppl for v, s in spec.profiles["cpu"].variants.items()}
    assert got == {v: ppl for _, v, ppl in jobs}
    read_raw(p)


def test_entry_update_dict_round_trip():
    upd = _whole_upd("fp16", 12.3456789)
    assert EntryUpdate.from_dict(upd.to_dict()) == upd
    assert upd.recorded() == {"ppl": 12.345679, "window_nlls": [2.513306] * 3, "provenance": {"date": "today"}}


def test_a_bom_stays_and_the_update_reads_back(tmp_path):
    """A file saved with a UTF-8 byte order mark keeps it; the spliced entry parses."""
    from pplgate.gate.spec import parse_baseline

    text = "\ufeff# with a BOM\nschema_version: 1\nmodel: {name: m, source: s}\nprofiles:\n  cpu:\n    device: cpu\n"
    text += "    variants:\n      fp32:\n        kind: fp32\n        tolerance: [{type: absolute, max_delta: 1}]\n"
    p = tmp_path / "bom.yaml"
    p.write_text(text, encoding="utf-8")
    write_updates(p, [EntryUpdate("cpu", "fp32", {"n_windows": 2}, 2.0, [0.693147, 0.693147], {"date": "x"})])
    new = p.read_text(encoding="utf-8")
    assert new.startswith(text.rstrip("\n").split("tolerance")[0]) and new.count("\ufeff") == 1
    rec = parse_baseline(p, known_kinds=["fp32"]).profiles["cpu"].variants["fp32"].recorded
    assert rec.ppl == 2.0 and rec.window_nlls == [0.693147, 0.693147]


# --------------------------------------------------------------------------- tests: entries (ppl_regression)


def _tupd(name: str, ppl: float = 12.5) -> EntryUpdate:
    return EntryUpdate(
        profile="tests",
        variant=name,
        fingerprint={"n_tokens": 2, "variant": {"kind": "rtn", "w_bit": 4}},
        ppl=ppl,
        window_nlls=[math.log(ppl)],
        provenance={"date": "today"},
        section="tests",
    )


def test_tests_entries_create_the_file_then_append(tmp_path):
    f = tmp_path / "baselines" / "test_mod.yaml"  # neither the directory nor the file exists
    rows = write_updates(f, [_tupd("one")])
    assert rows[0]["applied"] and rows[0]["old"] is None
    text = f.read_text()
    assert text.startswith("# pplgate baselines.") and "schema_version: 1\ntests:\n  one:\n    fingerprint:\n" in text
    write_updates(f, [_tupd("two", 13.0), _tupd("one", 14.0)])
    data = plain(read_raw(f))
    assert list(data["tests"]) == ["one", "two"]
    assert data["tests"]["one"]["recorded"]["ppl"] == 14.0 and data["tests"]["two"]["recorded"]["ppl"] == 13.0
    assert data["tests"]["two"]["fingerprint"]["variant"] == {"kind": "rtn", "w_bit": 4}


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_a_tests_section_goes_after_the_profiles_and_leaves_them_alone(newline):
    doc = DOC.replace("\n", newline)
    text, rows = apply_updates(Path("m.yaml"), doc[: -len(newline)], [_tupd("t")])  # no final newline either
    assert rows[0]["applied"]
    assert text.startswith(doc) and text[len(doc) :].startswith(f"tests:{newline}  t:{newline}")
    if newline == "\r\n":
        assert "\n" not in text.replace("\r\n", "")  # no bare LF added
    assert not text.endswith(newline)  # the file had no final newline: kept that way


def test_a_tests_entry_with_a_tolerance_keeps_it_and_its_comments():
    doc = (
        "schema_version: 1\ntests:\n    # the team's bound\n    x:\n        tolerance:\n"
        "          - {type: absolute, max_delta: 0.5}  # why\n"
    )
    text, _ = apply_updates(Path("m.yaml"), doc, [_tupd("x"), _tupd("y")])
    assert text.startswith(doc) and "        fingerprint:\n" in text and "\n    y:\n        fingerprint:\n" in text
    rules = plain(parse_text(Path("m.yaml"), text))["tests"]["x"]["tolerance"]
    assert rules == [{"type": "absolute", "max_delta": 0.5}]
