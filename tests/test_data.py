"""Dataset loading: explicit path, $PPLGATE_WIKITEXT, the hub (mocked at the boundary), the
"\\n\\n" join, the sha256 check and every bad-input error."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from pplgate_testutils import write_jsonl

from pplgate.data import CANONICAL_SHA256, WIKITEXT_ENV, load_canonical_text, load_wikitext2_test
from pplgate.errors import DatasetError


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    monkeypatch.delenv(WIKITEXT_ENV, raising=False)


def test_rows_joined_with_blank_line(tmp_path: Path) -> None:
    p = write_jsonl(tmp_path / "test.jsonl", [" = A = \n", "", " b \n"])
    ct = load_canonical_text(p, allow_noncanonical=True)
    assert ct.text == " = A = \n\n\n\n\n b \n"
    assert ct.sha256 == hashlib.sha256(ct.text.encode()).hexdigest()
    assert ct.n_rows == 3 and ct.canonical is False and ct.source == str(p)
    assert ct.n_bytes == len(ct.text.encode())


def test_parquet_and_directory_sources(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = ["x\n", "", "y\n"]
    pq.write_table(pa.table({"text": rows}), tmp_path / "test-00000-of-00001.parquet")
    assert load_wikitext2_test(tmp_path / "test-00000-of-00001.parquet")[0] == rows
    # a directory: the parquet file is preferred over a jsonl one
    write_jsonl(tmp_path / "test.jsonl", ["other\n"])
    got, source = load_wikitext2_test(tmp_path)
    assert got == rows and source == str(tmp_path)


def test_env_var_is_used_when_no_path(tmp_path: Path, monkeypatch) -> None:
    p = write_jsonl(tmp_path / "t.jsonl", ["from env\n"])
    monkeypatch.setenv(WIKITEXT_ENV, str(p))
    assert load_wikitext2_test() == (["from env\n"], str(p))
    other = write_jsonl(tmp_path / "u.jsonl", ["explicit\n"])
    assert load_wikitext2_test(other)[0] == ["explicit\n"]  # an explicit path wins


def test_hub_failure_tells_the_user_how_to_go_offline(monkeypatch) -> None:
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'wikitext' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DatasetError) as info:
        load_canonical_text()
    msg = str(info.value)
    assert "--dataset" in msg and WIKITEXT_ENV in msg and "ConnectionError" in msg


def test_hub_path_requests_the_test_split(monkeypatch) -> None:
    import datasets

    calls = []

    def fake(*args, **kwargs):
        calls.append((args, kwargs))
        return {"text": ["a\n", "b\n"]}

    monkeypatch.setattr(datasets, "load_dataset", fake)
    rows, source = load_wikitext2_test()
    assert rows == ["a\n", "b\n"]
    assert calls == [(("wikitext", "wikitext-2-raw-v1"), {"split": "test"})]
    assert source == "hf:wikitext/wikitext-2-raw-v1:test"


def test_altered_row_is_a_hash_mismatch_naming_both_hashes(tmp_path: Path, wikitext_dir: Path) -> None:
    lines = (wikitext_dir / "test.jsonl").read_text(encoding="utf-8").splitlines()
    i = next(i for i, line in enumerate(lines) if json.loads(line)["text"].strip())
    row = json.loads(lines[i])
    row["text"] = row["text"].replace(" ", "  ", 1)  # one extra space in one row
    lines[i] = json.dumps(row)
    bad = tmp_path / "test.jsonl"
    bad.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DatasetError) as info:
        load_canonical_text(bad)
    ct = load_canonical_text(bad, allow_noncanonical=True)
    msg = str(info.value)
    assert CANONICAL_SHA256 in msg and ct.sha256 in msg and ct.sha256 != CANONICAL_SHA256
    assert "--allow-noncanonical" in msg
    assert ct.canonical is False and ct.n_rows == 4358


def test_wrong_row_count_is_reported(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="1 rows here, 4358 expected"):
        load_canonical_text(write_jsonl(tmp_path / "t.jsonl", ["short\n"]))


@pytest.mark.parametrize("rows", [[], ["", "", "   \n"]], ids=["no-rows", "blank-rows"])
def test_empty_dataset(tmp_path: Path, rows) -> None:
    p = write_jsonl(tmp_path / "test.jsonl", rows)
    with pytest.raises(DatasetError, match="empty"):
        load_canonical_text(p, allow_noncanonical=True)


def test_nonexistent_path(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        load_canonical_text(tmp_path / "missing.parquet")


def test_directory_without_data_files(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("nothing here")
    with pytest.raises(DatasetError, match="no .parquet or .jsonl"):
        load_canonical_text(tmp_path)


def test_unsupported_suffix(tmp_path: Path) -> None:
    p = tmp_path / "test.txt"
    p.write_text("hello")
    with pytest.raises(DatasetError, match="unsupported"):
        load_canonical_text(p)


def test_malformed_jsonl_names_the_line(tmp_path: Path) -> None:
    p = tmp_path / "test.jsonl"
    p.write_text('{"text": "ok"}\n{"txt": "no text key"}\n', encoding="utf-8")
    with pytest.raises(DatasetError, match=r"test.jsonl:2: expected a JSON object with a 'text' field"):
        load_canonical_text(p)


def test_corrupt_parquet(tmp_path: Path) -> None:
    p = tmp_path / "test.parquet"
    p.write_bytes(b"not a parquet file")
    with pytest.raises(DatasetError, match="cannot read parquet"):
        load_canonical_text(p)
