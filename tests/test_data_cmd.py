"""``pplgate data`` and ``pplgate data fetch``: the checked copy into the user data folder (real files from the
shared folder), the sha256 refusal, the download from a real local HTTP server at ``$HF_ENDPOINT`` (the hub
itself is not reachable here) and its errors offline; afterwards the loader finds the copy without variables."""

from __future__ import annotations

import functools
import http.server
import shutil
import socket
import threading
from pathlib import Path

import pytest
from support import need_shared

from pplgate.cli import main
from pplgate.locate import DATA_DIR_ENV, DATA_STEP, SHARED_ENV, WIKITEXT_ENV, find_wikitext
from pplgate.protocol.dataset import CANONICAL_SHA256, HUB_FILE, HUB_FILE_PATH, load_canonical_text

SHARED_PARQUET = ("data", "wikitext-2-raw-v1", HUB_FILE)


@pytest.fixture
def data_folder(tmp_path: Path, monkeypatch) -> Path:
    """An empty data folder, no variable naming the split, no shared folder, a working dir outside any checkout."""
    for var in (WIKITEXT_ENV, "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv(SHARED_ENV, str(tmp_path / "no-shared"))
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "data"))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return tmp_path / "data"


@pytest.fixture(scope="module")
def parquet() -> Path:
    return need_shared(*SHARED_PARQUET)


@pytest.fixture(scope="module")
def jsonl() -> Path:
    return need_shared("data", "wikitext-2-raw-v1", "test.jsonl")


def altered_copy(src: Path, dest: Path) -> Path:
    """``src``'s rows with one character of row 1 changed, written as parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = pq.read_table(src).column("text").to_pylist()
    rows[1] = rows[1].replace("=", "-", 1)
    pq.write_table(pa.table({"text": rows}), dest)
    return dest


def test_fetch_from_a_file_then_everything_finds_it(data_folder: Path, parquet: Path, capsys) -> None:
    assert find_wikitext().path is None  # nothing local: the hub would come next
    assert main(["data", "fetch", "--from", str(parquet)]) == 0
    stored = data_folder / "wikitext-2-raw-v1" / HUB_FILE
    assert stored.read_bytes() == parquet.read_bytes()
    assert [p.name for p in data_folder.iterdir()] == ["wikitext-2-raw-v1"]  # no staging leftovers
    found = find_wikitext()
    assert (found.path, found.step) == (stored.parent, DATA_STEP)
    text = load_canonical_text()
    assert text.canonical and text.sha256 == CANONICAL_SHA256 and text.found_by == DATA_STEP
    capsys.readouterr()
    assert main(["data"]) == 0
    out = capsys.readouterr().out
    assert f"{DATA_STEP}: {stored.parent} (USED)" in out and "4358 rows" in out and "(ok)" in out


def test_fetch_refuses_another_text_and_keeps_the_good_copy(data_folder: Path, parquet: Path, tmp_path, capsys) -> None:
    bad = altered_copy(parquet, tmp_path / HUB_FILE)
    assert main(["data", "fetch", "--from", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pplgate: error: pplgate data fetch: ") and "is not the wikitext-2-raw-v1 test split" in err
    assert CANONICAL_SHA256 in err and "Nothing was written" in err
    assert not data_folder.exists()  # a failed first fetch leaves no folder behind
    assert main(["data", "fetch", "--from", str(parquet)]) == 0
    assert main(["data", "fetch", "--from", str(bad)]) == 2
    assert (data_folder / "wikitext-2-raw-v1" / HUB_FILE).read_bytes() == parquet.read_bytes()
    assert sorted(p.name for p in data_folder.iterdir()) == ["wikitext-2-raw-v1"]


def test_fetch_checks_the_rows_not_the_bytes(data_folder: Path, parquet: Path, jsonl: Path, tmp_path) -> None:
    """Another writer's parquet of the same rows, and the jsonl copy, are the split; one copy stays."""
    import pyarrow.parquet as pq

    rewritten = tmp_path / "rewritten" / HUB_FILE
    rewritten.parent.mkdir()
    pq.write_table(pq.read_table(parquet), rewritten, compression="gzip", row_group_size=1000)
    assert rewritten.read_bytes() != parquet.read_bytes()
    assert main(["data", "fetch", "--from", str(rewritten)]) == 0
    assert main(["data", "fetch", "--from", str(jsonl)]) == 0
    assert [p.name for p in (data_folder / "wikitext-2-raw-v1").iterdir()] == ["test.jsonl"]
    assert load_canonical_text().sha256 == CANONICAL_SHA256


@pytest.mark.parametrize(
    ("arg", "needle"),
    [("missing.parquet", "no such file"), (".", "is a directory; give the file"), ("notes.txt", "expected the test")],
)
def test_fetch_from_a_wrong_path_names_it(data_folder: Path, arg: str, needle: str, capsys) -> None:
    Path("notes.txt").write_text("x")
    assert main(["data", "fetch", "--from", arg]) == 2
    assert needle in capsys.readouterr().err
    assert not data_folder.exists()


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def local_hub(tmp_path: Path, parquet: Path, monkeypatch):
    """A real HTTP server at $HF_ENDPOINT serving the split at the hub's path."""
    root = tmp_path / "hub"
    (root / HUB_FILE_PATH).parent.mkdir(parents=True)
    shutil.copyfile(parquet, root / HUB_FILE_PATH)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    yield root
    server.shutdown()
    server.server_close()


def test_fetch_downloads_the_split(data_folder: Path, local_hub: Path, parquet: Path, capsys) -> None:
    assert main(["data", "fetch"]) == 0
    assert (data_folder / "wikitext-2-raw-v1" / HUB_FILE).read_bytes() == parquet.read_bytes()
    assert f"/{HUB_FILE_PATH}" in capsys.readouterr().out
    altered_copy(parquet, local_hub / HUB_FILE_PATH)  # the endpoint serves something else: refused, copy kept
    assert main(["data", "fetch"]) == 2
    assert "is not the wikitext-2-raw-v1 test split" in capsys.readouterr().err
    assert (data_folder / "wikitext-2-raw-v1" / HUB_FILE).read_bytes() == parquet.read_bytes()


def test_fetch_without_network_says_what_to_do(data_folder: Path, monkeypatch, capsys) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    assert main(["data", "fetch"]) == 2
    err = capsys.readouterr().err
    assert f"cannot download http://127.0.0.1:{port}/{HUB_FILE_PATH}" in err
    assert "curl -LO" in err and "pplgate data fetch --from" in err
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["data", "fetch"]) == 2
    assert "HF_HUB_OFFLINE" in capsys.readouterr().err
    assert not data_folder.exists()


def test_data_shows_every_step_and_a_bad_copy(data_folder: Path, parquet: Path, tmp_path, monkeypatch, capsys) -> None:
    assert main(["data"]) == 0
    out = capsys.readouterr().out
    assert f"${WIKITEXT_ENV}: not set" in out and f"{tmp_path / 'no-shared'}" in out
    assert f"{data_folder / 'wikitext-2-raw-v1'} (does not exist; `pplgate data fetch` puts" in out
    assert "the Hugging Face hub" in out and "no local copy" in out and f"data folder: {data_folder}" in out
    monkeypatch.setenv(WIKITEXT_ENV, str(altered_copy(parquet, tmp_path / "bad.parquet")))
    assert main(["data"]) == 1
    out = capsys.readouterr().out
    assert f"${WIKITEXT_ENV}: {tmp_path / 'bad.parquet'} (USED)" in out and "is NOT usable" in out
