"""The quantization cache: keys, atomic writes, corruption detection, modes, concurrency."""

from __future__ import annotations

import json
import os
import threading
import warnings
from pathlib import Path

import pytest

from pplgate.errors import CacheError, CacheWarning
from pplgate.models.quant_cache import (
    MANIFEST,
    QuantCache,
    cache_key,
    cache_key_parts,
    default_cache_root,
)
from pplgate.models.source import ModelSource


def _builder(calls: list, payload: bytes = b"weights" * 100):
    def build(d: Path):
        calls.append(d)
        (d / "model").mkdir()
        (d / "model" / "w.bin").write_bytes(payload)
        (d / "model" / "config.json").write_text("{}")
        return {"quantize_time_s": 1.5}

    return build


def test_build_then_hit(tmp_path):
    cache = QuantCache(tmp_path)
    calls: list = []
    e1, hit1 = cache.get_or_build("k1", _builder(calls), {"m": 1})
    e2, hit2 = cache.get_or_build("k1", _builder(calls))
    assert (hit1, hit2) == (False, True) and len(calls) == 1
    assert e2.meta["quantize_time_s"] == 1.5 and e2.meta["m"] == 1
    assert sorted(json.loads((e2.path / MANIFEST).read_text())["files"]) == ["model/config.json", "model/w.bin"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


@pytest.mark.parametrize("damage", ["truncate", "flip", "no_manifest", "missing_file", "extra_file", "bad_json"])
def test_corrupt_entry_detected_and_rebuilt(tmp_path, damage):
    cache = QuantCache(tmp_path)
    calls: list = []
    entry, _ = cache.get_or_build("k", _builder(calls))
    w = entry.path / "model" / "w.bin"
    if damage == "truncate":
        w.write_bytes(w.read_bytes()[:10])
    elif damage == "flip":
        w.write_bytes(b"X" + w.read_bytes()[1:])
    elif damage == "no_manifest":
        (entry.path / MANIFEST).unlink()
    elif damage == "missing_file":
        w.unlink()
    elif damage == "extra_file":
        (entry.path / "model" / "stray.bin").write_bytes(b"?")
    else:
        (entry.path / MANIFEST).write_text("{not json")
    with pytest.warns(CacheWarning, match=str(entry.path)):
        entry2, hit = cache.get_or_build("k", _builder(calls))
    assert not hit and len(calls) == 2
    assert cache.verify("k")[0] is not None and (entry2.path / "model" / "w.bin").stat().st_size == 700


def test_killed_write_never_loads(tmp_path):
    cache = QuantCache(tmp_path)

    def dies(d: Path):
        (d / "half.bin").write_bytes(b"partial")
        raise KeyboardInterrupt  # the run is killed mid-build

    with pytest.raises(KeyboardInterrupt):
        cache.get_or_build("k", dies)
    assert cache.lookup("k") is None and not cache.entry_path("k").exists()
    # a leftover temp folder of a hard-killed process (no cleanup ran) is never read either
    (tmp_path / ".tmp-k-dead").mkdir()
    (tmp_path / ".tmp-k-dead" / "half.bin").write_bytes(b"x")
    assert cache.lookup("k") is None
    calls: list = []
    assert cache.get_or_build("k", _builder(calls))[1] is False
    assert cache.clear(stale_tmp_age_s=0) == 1 and cache.verify("k")[0] is not None


def test_modes(tmp_path):
    calls: list = []
    QuantCache(tmp_path, "use").get_or_build("k", _builder(calls))
    _, hit = QuantCache(tmp_path, "refresh").get_or_build("k", _builder(calls))
    assert not hit and len(calls) == 2
    assert QuantCache(tmp_path, "use").get_or_build("k", _builder(calls))[1] is True
    off = QuantCache(tmp_path, "off")
    assert off.lookup("k") is None and not off.enabled
    with pytest.raises(CacheError):
        off.get_or_build("k", _builder(calls))
    with pytest.raises(CacheError, match="mode"):
        QuantCache(tmp_path, "sometimes")


def test_clear_and_entries(tmp_path):
    cache = QuantCache(tmp_path)
    for k in ("a", "b"):
        cache.get_or_build(k, _builder([]))
    (cache.entry_path("b") / MANIFEST).unlink()
    listed = cache.entries()
    assert [e.key for e in listed if not isinstance(e, tuple)] == ["a"]
    assert [e[0] for e in listed if isinstance(e, tuple)] == ["b"]
    assert cache.clear("a") == 1 and not cache.entry_path("a").exists()
    assert cache.clear() == 1 and cache.entries() == []


def test_concurrent_writers_build_once(tmp_path):
    calls: list = []
    results: list = []
    barrier = threading.Barrier(4)

    def worker():
        barrier.wait()
        results.append(QuantCache(tmp_path).get_or_build("k", _builder(calls)))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and sorted(hit for _, hit in results) == [False, True, True, True]
    assert QuantCache(tmp_path).verify("k")[0] is not None


def test_rename_wins_without_lock(tmp_path):
    cache = QuantCache(tmp_path)
    first = cache._write("k", _builder([]), {})
    second = cache._write("k", _builder([], payload=b"other"), {})  # a lock-less racer finds a valid entry
    assert second.path == first.path and (first.path / "model" / "w.bin").stat().st_size == 700


def test_root_resolution(tmp_path, monkeypatch):
    monkeypatch.setenv("PPLGATE_CACHE_DIR", str(tmp_path / "env"))
    assert default_cache_root() == tmp_path / "env" and QuantCache().root == tmp_path / "env"
    assert QuantCache(tmp_path / "explicit").root == tmp_path / "explicit"
    monkeypatch.delenv("PPLGATE_CACHE_DIR")
    assert default_cache_root().parts[-3:] == (".cache", "pplgate", "quant") or "pplgate" in str(default_cache_root())


def test_key_changes_with_every_input(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    (d / "model.safetensors").write_bytes(b"abc")
    (d / "config.json").write_text("{}")
    src = ModelSource(str(d))
    base = dict(variant={"w_bit": 4, "q_group_size": 64}, calibration_sha256="c1", versions={"autoawq": "0.2.9"})

    def key(source=src, **over):
        kw = {**base, **over}
        return cache_key(cache_key_parts(source, kw["variant"], kw["calibration_sha256"], kw["versions"]))

    k0 = key()
    assert key() == k0  # stable
    assert key(variant={"w_bit": 4, "q_group_size": 32}) != k0
    assert key(calibration_sha256="c2") != k0
    assert key(versions={"autoawq": "0.2.8"}) != k0
    assert key(source=ModelSource("org/model")) != key(source=ModelSource("org/model", revision="abc"))
    os.utime(d / "model.safetensors", (1, 1))  # mtime alone does not change the key
    assert key() == k0
    (d / "model.safetensors").write_bytes(b"abd")  # content does
    assert key() != k0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert QuantCache(tmp_path / "c").lookup("nothing") is None  # absent: no warning


def test_clear_refuses_a_root_holding_anything_else(tmp_path):
    """``pplgate cache clear --cache-dir ~`` used to delete every sub-directory of the home directory."""
    cache = QuantCache(tmp_path)
    cache.get_or_build("a" * 64, _builder([]))
    (tmp_path / "Documents").mkdir()
    (tmp_path / "Documents" / "thesis.tex").write_text("years of work")
    (tmp_path / "notes.txt").write_text("keep")
    with pytest.raises(CacheError, match=r"refusing to clear .*: it holds 2 item\(s\) that are not pplgate cache"):
        cache.clear()
    with pytest.raises(CacheError, match=r"Documents/, notes\.txt"):
        cache.plan_clear()
    assert (tmp_path / "Documents" / "thesis.tex").read_text() == "years of work"
    assert cache.verify("a" * 64)[0] is not None  # nothing was removed, the entry included


def test_clear_removes_only_the_cache_items_and_says_which(tmp_path):
    cache = QuantCache(tmp_path)
    key = "b" * 64
    cache.get_or_build(key, _builder([]))
    (tmp_path / ".tmp-bbbbbbbbbbbbbbbb-dead").mkdir()
    (tmp_path / f".trash-{key}-0123abcd").mkdir()
    planned = {p.name for p in cache.plan_clear()}
    assert planned == {key, f"{key}.lock", ".tmp-bbbbbbbbbbbbbbbb-dead", f".trash-{key}-0123abcd"}
    assert cache.clear() == 3 and list(tmp_path.iterdir()) == []


def test_a_lock_named_file_that_is_not_ours_is_foreign(tmp_path):
    (tmp_path / "poetry.lock").write_text("x")
    with pytest.raises(CacheError, match=r"poetry\.lock"):
        QuantCache(tmp_path).clear()


def _valid_manifest(tmp_path) -> tuple[QuantCache, str, dict]:
    cache, key = QuantCache(tmp_path), "a" * 64
    entry, _ = cache.get_or_build(key, _builder([]), {"source": "tiny"})
    return cache, key, json.loads((entry.path / MANIFEST).read_text())


TAMPERED = {
    "a list": lambda m: [m],
    "null": lambda m: None,
    "a number": lambda m: 7,
    "files is a list": lambda m: {**m, "files": list(m["files"])},
    "files is empty": lambda m: {**m, "files": {}},
    "files absent": lambda m: {k: v for k, v in m.items() if k != "files"},
    "record lacks size": lambda m: {**m, "files": {r: {"sha256": v["sha256"]} for r, v in m["files"].items()}},
    "record lacks sha256": lambda m: {**m, "files": {r: {"size": v["size"]} for r, v in m["files"].items()}},
    "size is a string": lambda m: {**m, "files": {r: {**v, "size": str(v["size"])} for r, v in m["files"].items()}},
    "size is a bool": lambda m: {**m, "files": {r: {**v, "size": True} for r, v in m["files"].items()}},
    "size is negative": lambda m: {**m, "files": {r: {**v, "size": -1} for r, v in m["files"].items()}},
    "sha256 is a number": lambda m: {**m, "files": {r: {**v, "sha256": 12} for r, v in m["files"].items()}},
    "record is a list": lambda m: {**m, "files": {r: [v["size"], v["sha256"]] for r, v in m["files"].items()}},
    "key is a number": lambda m: {**m, "key": 123},
    "key absent": lambda m: {k: v for k, v in m.items() if k != "key"},
    "meta is a list": lambda m: {**m, "meta": ["source"]},
    "build_time_s is a string": lambda m: {**m, "build_time_s": "fast"},
    "created is a number": lambda m: {**m, "created": 5},
}


@pytest.mark.parametrize("how", list(TAMPERED))
def test_tampered_manifest_is_an_invalid_entry_and_rebuilt(tmp_path, how, capsys):
    from pplgate.cli import main

    cache, key, manifest = _valid_manifest(tmp_path)
    (cache.entry_path(key) / MANIFEST).write_text(json.dumps(TAMPERED[how](manifest)), encoding="utf-8")
    entry, reason = cache.verify(key)
    assert entry is None and reason and "manifest" in reason
    assert main(["cache", "list", "--cache-dir", str(tmp_path)]) == 0  # listed as INVALID, no traceback
    assert f"{key}  INVALID: " in capsys.readouterr().out
    calls: list = []
    with pytest.warns(CacheWarning, match="is invalid"):
        _, hit = cache.get_or_build(key, _builder(calls))
    assert not hit and len(calls) == 1 and cache.verify(key)[0] is not None


def test_deeply_nested_manifest_is_invalid_not_a_crash(tmp_path):
    cache, key, _ = _valid_manifest(tmp_path)
    (cache.entry_path(key) / MANIFEST).write_text("[" * 100_000 + "]" * 100_000, encoding="utf-8")
    entry, reason = cache.verify(key)
    assert entry is None and "unreadable manifest" in reason


def test_random_json_in_any_manifest_field_never_crashes(tmp_path_factory):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    cache, key, manifest = _valid_manifest(tmp_path_factory.mktemp("fuzz"))
    rel = next(iter(manifest["files"]))
    json_values = st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
        lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=5), kids, max_size=3),
        max_leaves=8,
    )
    paths = [("key",), ("files",), ("files", rel), ("files", rel, "size"), ("files", rel, "sha256"), ("meta",)]
    paths += [("created",), ("build_time_s",), ("format",)]

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(path=st.sampled_from(paths), value=json_values)
    def check(path, value):
        tampered = json.loads(json.dumps(manifest))
        node = tampered
        for part in path[:-1]:
            node = node[part]
        node[path[-1]] = value
        (cache.entry_path(key) / MANIFEST).write_text(json.dumps(tampered), encoding="utf-8")
        entry, reason = cache.verify(key)  # never raises
        if entry is not None:  # still a manifest this cache could have written: its fields read as written
            assert isinstance(entry.meta, dict) and isinstance(entry.manifest.get("build_time_s", 0), (int, float))

    check()


def test_a_cache_root_that_is_a_file_is_an_error_naming_the_fix(tmp_path, monkeypatch, capsys):
    from pplgate.cli import main

    root = tmp_path / "not-a-dir"
    root.write_text("x")
    cache = QuantCache(root)
    for call in (cache.entries, cache.plan_clear, lambda: cache.get_or_build("k", _builder([]))):
        with pytest.raises(CacheError, match=rf"cache root {root} is a file, not a directory; point --cache-dir"):
            call()
    monkeypatch.setenv("PPLGATE_CACHE_DIR", str(root))
    for action in ("list", "clear"):
        assert main(["cache", action]) == 2
        assert "pplgate: error: the quantization cache root" in capsys.readouterr().err
    assert root.read_text() == "x"


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only directories")
def test_an_unwritable_cache_root_is_skipped_with_one_warning(tmp_path):
    """Issue #24: a read-only root (or one that cannot be created) is no failed entry: None, one CacheWarning, the
    build is not run (the caller builds in memory); an entry already there is still read."""
    root = tmp_path / "ro"
    root.mkdir()
    QuantCache(root).get_or_build("old", _builder([]))
    root.chmod(0o500)
    try:
        calls: list = []
        for cache in (QuantCache(root), QuantCache(root / "sub")):
            with pytest.warns(CacheWarning, match="cannot be written .*unwritable root") as rec:
                assert cache.get_or_build("k", _builder(calls)) is None
            assert len(rec) == 1 and calls == []
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert QuantCache(root).get_or_build("old", _builder(calls))[1] is True
    finally:
        root.chmod(0o700)


@pytest.mark.parametrize("errno_name", ["ENOSPC", "EDQUOT", "EROFS"])
def test_a_full_disk_while_writing_skips_the_entry(tmp_path, errno_name):
    """The build's write fails with a disk error: one CacheWarning naming it, None, no entry and no temp folder."""
    import errno

    code = getattr(errno, errno_name)
    made: list = []

    def build(d: Path):
        made.append("model in memory")
        (d / "part").write_bytes(b"x" * 10)
        raise OSError(code, os.strerror(code), str(d / "model.safetensors"))

    with pytest.warns(CacheWarning, match=rf"cannot be written \({os.strerror(code)} \({errno_name}\)\)") as rec:
        assert QuantCache(tmp_path).get_or_build("k", build) is None
    assert len(rec) == 1 and made == ["model in memory"]
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == []


def test_an_error_that_is_not_a_write_failure_still_raises(tmp_path):
    def build(d: Path):
        raise FileNotFoundError(2, "No such file or directory", "/nowhere/config.json")

    with pytest.raises(FileNotFoundError), warnings.catch_warnings():
        warnings.simplefilter("error")
        QuantCache(tmp_path).get_or_build("k", build)
