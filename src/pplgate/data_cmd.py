"""``pplgate data``: where the WikiText-2 test split and the calibration corpus are looked for, and which copy
is used; ``pplgate data fetch [--from FILE]``: put the test split into the user data folder, checked.

The data folder (:func:`pplgate.locate.data_dir`: ``$PPLGATE_DATA_DIR``, else ``~/.cache/pplgate/data``) is a
step of the lookup of every command and of the pytest plugin, after the options, the variables and the
shared folder: once fetched, the test split is found without any variable. ``fetch`` downloads the hub's
``wikitext-2-raw-v1/test-00000-of-00001.parquet`` (from ``$HF_ENDPOINT``, default https://huggingface.co);
``--from FILE`` copies a local ``.parquet`` or ``.jsonl`` copy instead (offline). Either way the file is
checked before it is put in place: its rows must be the 4,358 rows whose ``"\\n\\n"`` join has the canonical
sha256, the check every measurement makes. (The file's own bytes are not compared: two parquet writers
store the same rows differently; its sha256 is printed.) A file that fails leaves the folder as it was.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from pplgate.errors import DatasetError, DatasetNotFound
from pplgate.locate import (
    CALIBRATION_ENV,
    CALIBRATION_IN_SHARED,
    DATA_DIR_ENV,
    WIKITEXT_ENV,
    WIKITEXT_IN_SHARED,
    Lookup,
    data_dir,
    find_calibration,
    find_wikitext,
    hub_endpoint,
    hub_offline,
    hub_unreachable,
    lookup_steps,
)
from pplgate.protocol.dataset import (
    CANONICAL_ROWS,
    CANONICAL_SHA256,
    HUB_FILE,
    HUB_FILE_PATH,
    HUB_FILE_URL,
    JOINER,
    load_canonical_text,
    load_wikitext2_test,
    sha256_text,
)

MAX_DOWNLOAD_BYTES = 64 * 1024 * 1024  # the file is ~0.7 MB; anything far larger is not it
DOWNLOAD_TIMEOUT_S = 60.0
SUFFIX_NAMES = {".parquet": HUB_FILE, ".jsonl": "test.jsonl"}


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The ``data`` command and its ``fetch`` sub-command."""
    dp = sub.add_parser(
        "data",
        help="where the WikiText-2 test split and the calibration corpus are looked for; `data fetch` gets the split",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    dsub = dp.add_subparsers(dest="data_command")
    fp = dsub.add_parser(
        "fetch",
        help="download the wikitext-2-raw-v1 test split (or copy --from FILE) into the data folder, checked",
    )
    fp.add_argument(
        "--from",
        dest="from_file",
        metavar="FILE",
        help="copy this local test-00000-of-00001.parquet (or .jsonl copy) instead of downloading (offline)",
    )
    fp.add_argument(
        "--timeout", type=float, default=DOWNLOAD_TIMEOUT_S, help="download timeout in seconds (default 60)"
    )


def cmd_data(args: argparse.Namespace) -> int:
    """``pplgate data`` (show) or ``pplgate data fetch``."""
    if args.data_command == "fetch":
        source = Path(args.from_file).expanduser() if args.from_file else None
        dest = fetch_wikitext(source, timeout=args.timeout)
        print(f"pplgate data: the test split is in {dest}; pplgate's commands and pytest find it there")
        print("  (after --dataset, $PPLGATE_WIKITEXT and a shared folder, if any: `pplgate data` shows the order)")
        return 0
    return show()


# --------------------------------------------------------------------------- show


def _show_steps(lookup: Lookup, env: str, rel: tuple[str, ...], first: str, hint: str) -> list[str]:
    lines = [f"  1. {first}"]
    for i, step in enumerate(lookup_steps(env, rel), 2):
        if step.path is None:
            lines.append(f"  {i}. {step.note}")
            continue
        used = lookup.path is not None and step.name == lookup.step
        state = "USED" if used else ("exists" if step.path.exists() else "does not exist")
        extra = f"; {hint}" if step.name.startswith("the pplgate data") and not used else ""
        lines.append(f"  {i}. {step.name}: {step.path} ({state}{extra})")
    return lines


def show() -> int:
    """Print both inputs' lookup steps, which one is used, and check the test split that is found."""
    rc = 0
    wiki = find_wikitext(option="--dataset")
    print("WikiText-2 test split (wikitext-2-raw-v1, test):")
    for line in _show_steps(
        wiki,
        WIKITEXT_ENV,
        WIKITEXT_IN_SHARED,
        "--dataset PATH (pplgate commands), --pplgate-dataset PATH (pytest)",
        "`pplgate data fetch` puts the split there",
    ):
        print(line)
    n = len(lookup_steps(WIKITEXT_ENV, WIKITEXT_IN_SHARED)) + 2
    hub = "its local cache only (HF_HUB_OFFLINE is set)" if hub_offline() else f"{hub_endpoint()}, when reachable"
    print(f"  {n}. the Hugging Face hub: datasets.load_dataset('wikitext', 'wikitext-2-raw-v1'), {hub}")
    if wiki.path is None:
        print("  -> no local copy: the hub is tried (`pplgate data fetch` keeps a checked copy in the data folder)")
    else:
        try:
            text = load_canonical_text(wiki.path, option=wiki.step, noncanonical_option=None)
            print(f"  -> {text.source}: {text.n_rows} rows, canonical sha256 {text.sha256[:16]}... (ok)")
        except DatasetError as exc:
            print(f"  -> {wiki.path} (from {wiki.step}) is NOT usable: {exc}")
            rc = 1
    cal = find_calibration()
    print(f"calibration corpus (what a baseline's ${CALIBRATION_ENV} stands for):")
    for line in _show_steps(
        cal,
        CALIBRATION_ENV,
        CALIBRATION_IN_SHARED,
        "an entry's calibration: {path: FILE} names its own file",
        f"copy {CALIBRATION_IN_SHARED[-1]} there",
    ):
        print(line)
    print(f"  -> {cal.path if cal.path is not None else 'not found: entries that name it fail with where to put it'}")
    print(f"data folder: {data_dir()} (${DATA_DIR_ENV}, else $XDG_CACHE_HOME/pplgate/data or ~/.cache/pplgate/data)")
    return rc


# --------------------------------------------------------------------------- fetch


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_test_split(path: Path, label: str) -> str:
    """Refuse ``path`` unless its rows are the canonical test split (the sha256 of their ``"\\n\\n"`` join);
    returns the file's own sha256. ``label`` names the file in errors (a path or a URL)."""
    try:
        rows, _ = load_wikitext2_test(path, option=label)
    except DatasetError as exc:
        raise DatasetError(f"pplgate data fetch: {label} is not a readable copy of the test split: {exc}") from None
    digest = sha256_text(JOINER.join(rows))
    if digest != CANONICAL_SHA256:
        raise DatasetError(
            f"pplgate data fetch: {label} is not the wikitext-2-raw-v1 test split: the sha256 of its rows joined with "
            f'"\\n\\n" is {digest}, the canonical one is {CANONICAL_SHA256} ({len(rows)} rows, {CANONICAL_ROWS} '
            f"expected). Nothing was written. Get an unmodified copy ({HUB_FILE_URL}) and run it again."
        )
    return sha256_file(path)


def _download(url: str, out: Path, timeout: float) -> None:
    """Stream ``url`` into ``out``; errors name the URL and the offline way."""
    offline = (
        f"Without network: on a machine with hub access run `curl -LO {url}`, copy the file here and run "
        f"`pplgate data fetch --from {HUB_FILE}`."
    )
    if hub_offline():
        raise DatasetNotFound(f"pplgate data fetch: HF_HUB_OFFLINE (or the like) is set: no download. {offline}")
    why = hub_unreachable()
    if why is not None:
        raise DatasetNotFound(f"pplgate data fetch: cannot download {url}: {why}. {offline}")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, out.open("wb") as fh:
            n = 0
            for block in iter(lambda: resp.read(1 << 16), b""):
                n += len(block)
                if n > MAX_DOWNLOAD_BYTES:
                    raise DatasetError(f"pplgate data fetch: {url} sends more than {MAX_DOWNLOAD_BYTES} bytes: not it")
                fh.write(block)
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise DatasetNotFound(f"pplgate data fetch: cannot download {url}: {reason}. {offline}") from None


def fetch_wikitext(source: Path | None = None, *, timeout: float = DOWNLOAD_TIMEOUT_S) -> Path:
    """Download the test split (``source`` None) or copy ``source``, check it, and put it in the data folder;
    returns the file's new path. The folder is left as it was when anything fails."""
    root = data_dir()
    if source is not None:
        if source.is_dir():
            raise DatasetError(f"--from {source}: is a directory; give the file, e.g. --from {source / HUB_FILE}")
        if not source.is_file():
            raise DatasetError(f"--from {source}: no such file")
        if source.suffix not in SUFFIX_NAMES:
            raise DatasetError(f"--from {source}: expected the test split's .parquet file (or a .jsonl copy)")
    created = not root.exists()
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".fetch-", dir=root))
    except OSError as exc:
        raise DatasetError(
            f"cannot write the data folder {root} ({exc}); set ${DATA_DIR_ENV} to a writable folder"
        ) from None
    try:
        if source is None:
            url = f"{hub_endpoint()}/{HUB_FILE_PATH}"
            staged, label = tmp / HUB_FILE, url
            print(f"pplgate data: downloading {url}", flush=True)
            _download(url, staged, timeout)
        else:
            staged, label = tmp / SUFFIX_NAMES[source.suffix], str(source)
            try:
                shutil.copyfile(source, staged)
            except OSError as exc:
                raise DatasetError(f"--from {source}: cannot copy it into {root} ({exc})") from None
        file_sha = check_test_split(staged, label)
        dest_dir = root.joinpath(*WIKITEXT_IN_SHARED[1:])
        dest_dir.mkdir(parents=True, exist_ok=True)
        dest = dest_dir / staged.name
        os.replace(staged, dest)
        for other in dest_dir.iterdir():  # one copy only: the loader refuses to guess between several
            if other != dest and other.suffix in SUFFIX_NAMES:
                other.unlink()
    except OSError as exc:
        raise DatasetError(
            f"cannot write the data folder {root} ({exc}); set ${DATA_DIR_ENV} to a writable folder"
        ) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if created and not any(root.iterdir()):
            root.rmdir()  # a failed first fetch leaves no empty folder behind
    print(f"pplgate data: {label}: the canonical rows (text sha256 {CANONICAL_SHA256[:16]}...); file sha256 {file_sha}")
    return dest
