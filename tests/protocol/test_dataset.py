"""Dataset loading: explicit path, $PPLGATE_WIKITEXT, the shared folder, the hub (mocked at the
``datasets.load_dataset`` boundary; its endpoint a real local socket), the "\\n\\n" join, the sha256
check and every bad-input error."""

from __future__ import annotations

import hashlib
import json
import socket
import time
from pathlib import Path

import pytest
from support import env_cleared, write_jsonl

from pplgate.errors import DatasetError, DatasetNotFound
from pplgate.locate import SHARED_ENV, WIKITEXT_ENV
from pplgate.protocol.dataset import CANONICAL_SHA256, HUB_FILE_URL, load_canonical_text, load_wikitext2_test

HF_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_ENDPOINT")


_no_env = env_cleared(WIKITEXT_ENV, *HF_VARS)


@pytest.fixture
def no_local_copy(tmp_path: Path, monkeypatch) -> Path:
    """No option, no $PPLGATE_WIKITEXT, a shared folder that does not exist, a working dir outside any checkout."""
    monkeypatch.setenv(SHARED_ENV, str(tmp_path / "no-shared"))
    monkeypatch.chdir(tmp_path)
    return tmp_path / "no-shared"


@pytest.fixture
def hub_up(monkeypatch):
    """HF_ENDPOINT at a real listening local socket: the reachability probe succeeds."""
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{srv.getsockname()[1]}")
        yield


@pytest.fixture
def hub_down(monkeypatch):
    """HF_ENDPOINT at a local port nobody listens on: connections are refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")


@pytest.fixture
def load_dataset_calls(monkeypatch) -> list:
    """Replace the hub boundary: ``datasets.load_dataset`` records its calls and returns two rows."""
    import datasets

    calls: list = []

    def fake(*args, **kwargs):
        calls.append((args, kwargs))
        return {"text": ["a\n", "b\n"]}

    monkeypatch.setattr(datasets, "load_dataset", fake)
    return calls


def test_rows_joined_with_blank_line(tmp_path: Path) -> None:
    p = write_jsonl(tmp_path / "test.jsonl", [" = A = \n", "", " b \n"])
    ct = load_canonical_text(p, allow_noncanonical=True)
    assert ct.text == " = A = \n\n\n\n\n b \n"
    assert ct.sha256 == hashlib.sha256(ct.text.encode()).hexdigest()
    assert ct.n_rows == 3 and ct.canonical is False and ct.source == str(p)
    assert ct.n_bytes == len(ct.text.encode())


def _parquet(path: Path, rows: list) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": rows}), path)
    return path


def test_parquet_and_directory_sources(tmp_path: Path) -> None:
    rows = ["x\n", "", "y\n"]
    _parquet(tmp_path / "test-00000-of-00001.parquet", rows)
    assert load_wikitext2_test(tmp_path / "test-00000-of-00001.parquet")[0] == rows
    assert load_wikitext2_test(tmp_path) == (rows, str(tmp_path))
    # a directory: the parquet is read; its jsonl twin with the same rows (the shared folder's layout) is fine
    write_jsonl(tmp_path / "test.jsonl", rows)
    got, source = load_wikitext2_test(tmp_path)
    assert got == rows and source == str(tmp_path)


def test_the_shared_folder_layout_reads_the_parquet(wikitext_dir: Path) -> None:
    assert sorted(p.name for p in wikitext_dir.iterdir()) == ["test-00000-of-00001.parquet", "test.jsonl"]
    assert load_canonical_text(wikitext_dir).sha256 == CANONICAL_SHA256


@pytest.mark.parametrize(
    ("files", "needle"),
    [
        (
            {"test-00000-of-00002.parquet": ["a\n"], "test-00001-of-00002.parquet": ["b\n"]},
            "a split sharded over several files (test-00000-of-00002.parquet, test-00001-of-00002.parquet); the "
            "wikitext-2-raw-v1 test split is one file, test-00000-of-00001.parquet: pass that file with --x FILE",
        ),
        (
            {"test-00000-of-00001.parquet": ["a\n"], "test.jsonl": ["other\n"]},
            "2 candidate files of the test split (test-00000-of-00001.parquet, test.jsonl) whose rows differ "
            "(test-00000-of-00001.parquet vs test.jsonl); pplgate will not guess: pass the one to measure with --x",
        ),
        (
            {"test.parquet": ["a\n"], "test-00000-of-00001.parquet": ["a\n"]},
            "2 candidate files of the test split (test-00000-of-00001.parquet, test.parquet); pplgate will not "
            "guess: pass the one to measure with --x {dir}/test-00000-of-00001.parquet",
        ),
        ({"a.jsonl": ["a\n"], "b.jsonl": ["a\n"]}, "2 candidate files of the test split (a.jsonl, b.jsonl)"),
    ],
    ids=["sharded", "parquet-and-different-jsonl", "two-parquets", "two-jsonl"],
)
def test_a_directory_with_several_candidates_is_an_error_listing_them(tmp_path: Path, files, needle) -> None:
    for name, rows in files.items():
        (_parquet if name.endswith(".parquet") else write_jsonl)(tmp_path / name, rows)
    with pytest.raises(DatasetError) as info:
        load_wikitext2_test(tmp_path, option="--x")
    assert needle.format(dir=tmp_path) in str(info.value)


def test_other_splits_beside_the_test_file_are_not_candidates(tmp_path: Path) -> None:
    _parquet(tmp_path / "train-00000-of-00001.parquet", ["train\n"])
    _parquet(tmp_path / "validation-00000-of-00001.parquet", ["val\n"])
    _parquet(tmp_path / "test-00000-of-00001.parquet", ["test\n"])
    assert load_wikitext2_test(tmp_path)[0] == ["test\n"]


def test_env_var_is_used_when_no_path(tmp_path: Path, monkeypatch) -> None:
    p = write_jsonl(tmp_path / "t.jsonl", ["from env\n"])
    monkeypatch.setenv(WIKITEXT_ENV, str(p))
    assert load_wikitext2_test() == (["from env\n"], str(p))
    other = write_jsonl(tmp_path / "u.jsonl", ["explicit\n"])
    assert load_wikitext2_test(other)[0] == ["explicit\n"]  # an explicit path wins


def test_hub_failure_tells_the_user_how_to_go_offline(monkeypatch, no_local_copy, hub_up) -> None:
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'wikitext' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DatasetNotFound) as info:
        load_canonical_text()
    msg = str(info.value)
    assert "--dataset PATH" in msg and WIKITEXT_ENV in msg and "ConnectionError" in msg
    # the exact file, its column, the jsonl alternative and both ways to get it
    assert "test-00000-of-00001.parquet" in msg and 'column "text"' in msg and '{"text": ...}' in msg
    assert HUB_FILE_URL in msg and ".to_parquet(" in msg


def test_hub_path_requests_the_test_split(no_local_copy, hub_up, load_dataset_calls) -> None:
    rows, source = load_wikitext2_test()
    assert rows == ["a\n", "b\n"]
    assert load_dataset_calls == [(("wikitext", "wikitext-2-raw-v1"), {"split": "test"})]
    assert source == "hf:wikitext/wikitext-2-raw-v1:test"
    assert load_canonical_text(allow_noncanonical=True).found_by == "the Hugging Face hub"


def test_unreachable_hub_fails_in_seconds_without_retries(no_local_copy, hub_down, load_dataset_calls) -> None:
    t0 = time.perf_counter()
    with pytest.raises(DatasetNotFound) as info:
        load_canonical_text()
    assert time.perf_counter() - t0 < 3.0
    assert load_dataset_calls == []  # datasets (and its ~28 s of retries) never ran
    msg = str(info.value)
    assert "cannot connect to 127.0.0.1:" in msg
    # every step and the path it tried, in order
    steps = ["--dataset: not given", f"${WIKITEXT_ENV}: not set", f"${SHARED_ENV}: {no_local_copy}", "hub"]
    positions = [msg.index(step) for step in steps]
    assert positions == sorted(positions)


def test_hub_offline_fails_at_once_unless_datasets_reads_its_cache(
    monkeypatch, no_local_copy, load_dataset_calls
) -> None:
    import datasets.config

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)  # datasets imported before the variable was set
    with pytest.raises(DatasetNotFound, match="HF_HUB_OFFLINE is set"):
        load_canonical_text()
    assert load_dataset_calls == []
    # datasets in offline mode reads only its local cache: that may serve the split
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    ct = load_canonical_text(allow_noncanonical=True)
    assert len(load_dataset_calls) == 1 and ct.found_by == "the Hugging Face cache (offline mode)"


def test_missing_dataset_names_the_callers_option(no_local_copy, hub_down) -> None:
    with pytest.raises(DatasetNotFound) as info:
        load_canonical_text(option="--pplgate-dataset")
    msg = str(info.value)
    assert "--pplgate-dataset: not given" in msg and "pass --pplgate-dataset PATH" in msg
    assert "--dataset " not in msg.replace("--pplgate-dataset", "")


def test_lookup_order_option_env_shared(tmp_path: Path, monkeypatch) -> None:
    shared = tmp_path / "shared"
    (shared / "data" / "wikitext-2-raw-v1").mkdir(parents=True)
    write_jsonl(shared / "data" / "wikitext-2-raw-v1" / "test.jsonl", ["from shared\n"])
    monkeypatch.setenv(SHARED_ENV, str(shared))
    ct = load_canonical_text(allow_noncanonical=True)
    assert ct.text == "from shared\n" and ct.found_by == f"${SHARED_ENV}"
    monkeypatch.setenv(WIKITEXT_ENV, str(write_jsonl(tmp_path / "env.jsonl", ["from env\n"])))
    ct = load_canonical_text(allow_noncanonical=True)
    assert ct.text == "from env\n" and ct.found_by == f"${WIKITEXT_ENV}"
    ct = load_canonical_text(write_jsonl(tmp_path / "opt.jsonl", ["from option\n"]), allow_noncanonical=True)
    assert ct.text == "from option\n" and ct.found_by == "--dataset"


def test_a_named_path_that_does_not_exist_is_an_error_not_a_fallthrough(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(WIKITEXT_ENV, str(tmp_path / "missing.parquet"))
    with pytest.raises(DatasetError, match=r"does not exist.*\(from \$PPLGATE_WIKITEXT\)") as info:
        load_canonical_text()
    assert not isinstance(info.value, DatasetNotFound)  # a broken setting fails, even where a missing copy skips


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


@pytest.mark.parametrize("value", [5, None, ["a"], {"t": 1}, True], ids=["number", "null", "list", "object", "bool"])
def test_jsonl_text_that_is_not_a_string_names_the_line(tmp_path: Path, value) -> None:
    p = tmp_path / "test.jsonl"
    p.write_text('{"text": "ok"}\n\n' + json.dumps({"text": value}) + "\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=rf"test.jsonl:3: 'text' is .* \({type(value).__name__}\), not a string"):
        load_canonical_text(p, allow_noncanonical=True)


def test_parquet_text_that_is_not_a_string_names_the_row(tmp_path: Path) -> None:
    p = _parquet(tmp_path / "test.parquet", ["a", None, "c"])
    with pytest.raises(DatasetError, match=r"test.parquet: row 1 of column 'text' is None \(NoneType\), not a string"):
        load_canonical_text(p, allow_noncanonical=True)


def test_non_utf8_jsonl_is_a_dataset_error(tmp_path: Path) -> None:
    p = tmp_path / "test.jsonl"
    p.write_bytes(b'{"text": "caf\xe9"}\n')
    with pytest.raises(DatasetError, match=r"cannot read .*test.jsonl: 'utf-8' codec can't decode"):
        load_canonical_text(p, allow_noncanonical=True)


def test_deeply_nested_jsonl_line_names_the_line(tmp_path: Path) -> None:
    p = tmp_path / "test.jsonl"
    p.write_text('{"text": "ok"}\n' + "[" * 100_000 + "]" * 100_000 + "\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"test.jsonl:2: expected a JSON object with a 'text' field"):
        load_canonical_text(p, allow_noncanonical=True)
