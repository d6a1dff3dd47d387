"""On-disk cache of quantized models, content-addressed and written atomically.

Layout: ``<root>/<key>/`` holds the artefacts (e.g. ``model/`` from AutoAWQ ``save_quantized``) and
``manifest.json``, written last, listing every file with its size and sha256. ``<key>`` is the
sha256 of :func:`cache_key_parts` (source content as :mod:`pplgate.models.hashing` identifies it, variant config,
calibration, library versions). Root: ``ModelContext.cache_dir``, ``$PPLGATE_CACHE_DIR``, ``~/.cache/pplgate/quant``.

* Writes build in ``<root>/.tmp-<key>-<random>/`` (same filesystem) and ``os.rename`` into place:
  a killed run leaves only a ``.tmp-*`` folder that is never read (and is swept later).
* Readers verify the manifest (key, every file's size and sha256, no file missing). A corrupt or
  partial entry is reported with a :class:`CacheWarning` naming it, removed, and rebuilt.
* Concurrent writers (pytest-xdist workers) serialize on ``<root>/<key>.lock`` (``filelock``): the
  second waits and then finds a valid entry instead of quantizing again. Even without the lock the
  rename is rename-wins: a writer that finds a valid entry in place discards its own build.
* An entry that cannot be written (read-only or unwritable root, full disk: ``OSError`` with ENOSPC, EROFS,
  EACCES..., or a safetensors I/O error) is skipped with one :class:`CacheWarning`: :meth:`QuantCache.get_or_build`
  returns None and the caller measures what it built in memory (or builds it again without the cache).
* Modes: ``use`` (read, write), ``refresh`` (rebuild and replace), ``off`` (no reads, no writes).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pplgate.errors import CacheError, CacheWarning
from pplgate.models.hashing import sha256_file, source_fingerprint

if TYPE_CHECKING:
    from pplgate.models.source import ModelSource

CACHE_ENV = "PPLGATE_CACHE_DIR"
CACHE_FORMAT = 1
MANIFEST = "manifest.json"
_HEX_KEY = re.compile(r"[0-9a-f]{64}")
MODES = ("use", "refresh", "off")
LOCK_TIMEOUT_S = 6 * 3600  # an AWQ build of a large model on a slow machine can take hours


_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG, errno.EIO}


class _WriteFailed(Exception):
    """The entry could not be written (the message says why)."""


def write_failure(exc: BaseException) -> str | None:
    """Why ``exc`` is a failure to write to disk (full, read-only, no permission), else None (a real error)."""
    if isinstance(exc, OSError) and exc.errno in _WRITE_ERRNOS:
        return f"{exc.strerror or exc} ({errno.errorcode.get(exc.errno or 0, exc.errno)})"
    if type(exc).__name__ == "SafetensorError" and re.search(r"IoError|I/O error|No space|Read-only", str(exc)):
        return f"safetensors: {str(exc)[:200]}"
    return None


def default_cache_root() -> Path:
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "pplgate" / "quant"


def cache_key_parts(
    source: ModelSource, variant_config: Mapping[str, Any], calibration_sha256: str | None, versions: Mapping[str, Any]
) -> dict[str, Any]:
    return {
        "format": CACHE_FORMAT,
        "source": source_fingerprint(source),
        "variant": dict(variant_config),
        "calibration_sha256": calibration_sha256,
        "versions": dict(versions),
    }


def cache_key(parts: Mapping[str, Any]) -> str:
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


@dataclass
class CacheEntry:
    key: str
    path: Path
    manifest: dict[str, Any]

    @property
    def meta(self) -> dict[str, Any]:
        return self.manifest.get("meta", {})


# optional manifest fields and their JSON types (what _write puts there; readers format them)
_OPTIONAL_FIELDS: dict[str, tuple[type, ...]] = {"created": (str,), "build_time_s": (int, float), "meta": (dict,)}


def _json_type(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number"
    )


def manifest_problem(manifest: Any, key: str) -> str | None:
    """Why a parsed ``manifest.json`` is not one this cache wrote for ``key`` (wrong shape or types), else None."""
    if not isinstance(manifest, dict):
        return f"manifest is {_json_type(manifest)}, not an object"
    if manifest.get("key") != key:
        return f"manifest key {manifest.get('key')!r} does not match the entry name"
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        what = "an empty object" if files == {} else _json_type(files)
        return f"manifest 'files' is {what}, not an object of file records"
    for rel, rec in files.items():
        if not isinstance(rec, dict):
            return f"manifest record of {rel!r} is {_json_type(rec)}, not an object"
        size, digest = rec.get("size"), rec.get("sha256")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            return f"manifest record of {rel!r}: size is {size!r}, not a byte count"
        if not isinstance(digest, str) or not _HEX_KEY.fullmatch(digest):
            return f"manifest record of {rel!r}: sha256 is {digest!r}, not 64 hex digits"
    for name, types in _OPTIONAL_FIELDS.items():
        value = manifest.get(name)
        if name in manifest and (isinstance(value, bool) or not isinstance(value, types)):
            return f"manifest {name!r} is {_json_type(value)} ({value!r:.40})"
    return None


def _list_files(d: Path) -> list[Path]:
    return sorted(f for f in d.rglob("*") if f.is_file() and f.name != MANIFEST)


class QuantCache:
    """A cache root and a mode; see the module doc."""

    def __init__(self, root: str | os.PathLike[str] | None = None, mode: str = "use") -> None:
        if mode not in MODES:
            raise CacheError(f"cache mode must be one of {MODES}, got {mode!r}")
        self.root = Path(root).expanduser() if root else default_cache_root()
        self.mode = mode

    @property
    def enabled(self) -> bool:
        return self.mode != "off"

    def _root_error(self, why: str) -> CacheError:
        return CacheError(
            f"the quantization cache root {self.root} {why}; point --cache-dir (pplgate cache), --pplgate-cache-dir "
            f"or ${CACHE_ENV} at a writable directory, or run with --pplgate-cache off"
        )

    def _check_root(self) -> bool:
        """Whether the root exists; :class:`CacheError` when it is something other than a directory."""
        if self.root.exists() and not self.root.is_dir():
            raise self._root_error("is a file, not a directory")
        return self.root.is_dir()

    def _make_root(self) -> None:
        if not self._check_root():
            try:
                self.root.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise self._root_error(f"cannot be created ({exc.strerror or exc})") from exc

    def entry_path(self, key: str) -> Path:
        return self.root / key

    # -- reading -----------------------------------------------------------------------------
    def verify(self, key: str) -> tuple[CacheEntry | None, str | None]:
        """``(entry, None)`` if valid; ``(None, reason)`` if present but bad; ``(None, None)`` if absent."""
        d = self.entry_path(key)
        if not d.exists():
            return None, None
        mf = d / MANIFEST
        if not mf.is_file():
            return None, "manifest.json missing (partial or interrupted write)"
        try:
            manifest = json.loads(mf.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError) as exc:
            return None, f"unreadable manifest ({type(exc).__name__}: {exc})"
        problem = manifest_problem(manifest, key)
        if problem is not None:
            return None, problem
        files = manifest["files"]
        present = {str(f.relative_to(d)) for f in _list_files(d)}
        missing = sorted(set(files) - present)
        if missing:
            return None, f"files missing: {missing}"
        extra = sorted(present - set(files))
        if extra:
            return None, f"files not in the manifest: {extra}"
        for rel, rec in files.items():
            f = d / rel
            if f.stat().st_size != rec["size"]:
                return None, f"{rel}: size {f.stat().st_size} != {rec['size']} in the manifest (truncated?)"
            if sha256_file(f) != rec["sha256"]:
                return None, f"{rel}: sha256 mismatch (corrupt)"
        return CacheEntry(key, d, manifest), None

    def lookup(self, key: str) -> CacheEntry | None:
        """A valid entry for ``key`` in mode ``use``; a bad entry is warned about and removed."""
        if self.mode != "use":
            return None
        entry, reason = self.verify(key)
        if reason is not None:
            warnings.warn(
                f"pplgate quantization cache entry {self.entry_path(key)} is invalid ({reason}); rebuilding it",
                CacheWarning,
                stacklevel=2,
            )
            self._remove(self.entry_path(key))
        return entry

    # -- writing -----------------------------------------------------------------------------
    def discard(self, key: str) -> None:
        """Remove the entry ``key`` (one that verified but turned out unusable), atomically for readers."""
        self._remove(self.entry_path(key))

    def _remove(self, d: Path) -> None:
        if not d.exists():
            return
        trash = self.root / f".trash-{d.name}-{uuid.uuid4().hex[:8]}"
        try:
            os.rename(d, trash)  # atomic: readers never see a half-deleted entry
        except OSError:
            trash = d
        shutil.rmtree(trash, ignore_errors=True)

    def _lock(self, key: str):
        from filelock import FileLock

        self._make_root()
        return FileLock(str(self.root / f"{key}.lock"), timeout=LOCK_TIMEOUT_S)

    def _write(
        self, key: str, build: Callable[[Path], Mapping[str, Any] | None], meta: Mapping[str, Any]
    ) -> CacheEntry:
        self._make_root()
        try:
            tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{key[:16]}-", dir=self.root))
        except OSError as exc:
            raise _WriteFailed(f"the root is not writable: {exc.strerror or exc}") from exc
        try:
            t0 = time.perf_counter()
            try:
                extra = build(tmp) or {}
            except Exception as exc:
                why = write_failure(exc)
                if why is None:
                    raise
                raise _WriteFailed(why) from exc
            files = {
                str(f.relative_to(tmp)): {"size": f.stat().st_size, "sha256": sha256_file(f)} for f in _list_files(tmp)
            }
            if not files:
                raise CacheError(f"cache build for {key} wrote no files")
            manifest = {
                "key": key,
                "format": CACHE_FORMAT,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "build_time_s": time.perf_counter() - t0,
                "meta": {**dict(meta), **dict(extra)},
                "files": files,
            }
            mf = tmp / (MANIFEST + ".part")
            try:
                with open(mf, "w", encoding="utf-8") as fh:
                    json.dump(manifest, fh, indent=1, sort_keys=True, default=str)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(mf, tmp / MANIFEST)  # the manifest appears last, complete
            except OSError as exc:
                raise _WriteFailed(write_failure(exc) or str(exc)) from exc
            final = self.entry_path(key)
            if final.exists():
                existing, _ = self.verify(key)
                if existing is not None and self.mode == "use":
                    return existing  # another writer won; ours is discarded
                self._remove(final)
            try:
                os.rename(tmp, final)
            except OSError:
                existing, _ = self.verify(key)  # lost a race to another writer
                if existing is None:
                    raise
                return existing
            tmp = None  # type: ignore[assignment]
            return CacheEntry(key, final, manifest)
        finally:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)

    def get_or_build(
        self, key: str, build: Callable[[Path], Mapping[str, Any] | None], meta: Mapping[str, Any] | None = None
    ) -> tuple[CacheEntry, bool] | None:
        """``(entry, hit)``: a valid entry for ``key``, built with ``build(dir)`` (artefacts into ``dir``, returns
        extra manifest metadata) when needed. None, with one :class:`CacheWarning`, when it cannot be written: what
        ``build`` made in memory is the caller's (an unwritable root: not called). Not for mode ``off``."""
        if not self.enabled:
            raise CacheError("the cache is off")
        try:
            lock = self._lock(key)
            lock.acquire()
        except (OSError, CacheError) as exc:
            if isinstance(exc, TimeoutError) or (isinstance(exc, CacheError) and self.root.exists()):
                raise  # filelock.Timeout: another process holds the lock that long; a root that is a file
            entry = self.lookup(key) if self.root.is_dir() else None  # a read-only cache can still be read
            return (entry, True) if entry else self._skip(key, f"unwritable root: {getattr(exc, 'strerror', 0) or exc}")
        try:
            entry = self.lookup(key)
            if entry is not None:
                return entry, True
            try:
                return self._write(key, build, meta or {}), False
            except _WriteFailed as exc:
                return self._skip(key, str(exc))
        finally:
            lock.release()

    def _skip(self, key: str, why: str) -> None:
        msg = f"pplgate cache entry {self.entry_path(key)} cannot be written ({why}); skipped: what is built in memory"
        warnings.warn(f"{msg} is measured (free space or point ${CACHE_ENV} at a writable directory)", CacheWarning, 3)

    # -- maintenance -------------------------------------------------------------------------
    def entries(self) -> list[CacheEntry | tuple[str, str]]:
        """Valid entries, and ``(key, reason)`` for invalid ones."""
        out: list[CacheEntry | tuple[str, str]] = []
        if not self._check_root():
            return out
        for d in sorted(self.root.iterdir()):
            if d.is_dir() and not d.name.startswith("."):
                entry, reason = self.verify(d.name)
                out.append(entry if entry is not None else (d.name, reason or "absent"))
        return out

    def _is_cache_item(self, d: Path) -> bool:
        """What this cache itself creates: key-named entries, its temp/trash folders and lock files."""
        if d.is_dir() and not d.is_symlink():
            if d.name.startswith((".tmp-", ".trash-")):
                return True
            if (d / MANIFEST).exists() or (d / (MANIFEST + ".part")).exists():
                return True
            return _HEX_KEY.fullmatch(d.name) is not None or (self.root / f"{d.name}.lock").is_file()
        if d.is_file() and d.suffix == ".lock":
            stem = d.name[: -len(".lock")]
            return _HEX_KEY.fullmatch(stem) is not None or (self.root / stem).is_dir()
        return False

    def plan_clear(self, key: str | None = None, *, stale_tmp_age_s: float | None = None) -> list[Path]:
        """What :meth:`clear` would remove; refuses (``CacheError``) a root that holds anything else.

        With ``stale_tmp_age_s``, only ``.tmp-*``/``.trash-*`` folders older than that (safe while other
        processes are writing).
        """
        if not self._check_root():
            return []
        items = sorted(self.root.iterdir())
        foreign = [d for d in items if not self._is_cache_item(d)]
        if foreign:
            shown = ", ".join(d.name + ("/" if d.is_dir() else "") for d in foreign[:5])
            more = f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
            raise CacheError(
                f"refusing to clear {self.root}: it holds {len(foreign)} item(s) that are not pplgate cache "
                f"entries ({shown}{more}); point --cache-dir / $PPLGATE_CACHE_DIR at the cache directory itself "
                f"(default {default_cache_root()})"
            )
        now = time.time()
        out = []
        for d in items:
            if key is not None and d.name not in (key, f"{key}.lock"):
                continue
            is_tmp = d.name.startswith((".tmp-", ".trash-"))
            if stale_tmp_age_s is not None and (not is_tmp or now - d.stat().st_mtime < stale_tmp_age_s):
                continue
            out.append(d)
        return out

    def clear(self, key: str | None = None, *, stale_tmp_age_s: float | None = None) -> int:
        """Remove one entry (``key``) or all entries, temp and trash folders; returns how many folders.

        Only what :meth:`plan_clear` lists: a root holding anything but cache items is refused whole.
        """
        n = 0
        for d in self.plan_clear(key, stale_tmp_age_s=stale_tmp_age_s):
            if d.is_dir():
                shutil.rmtree(d, ignore_errors=True)
                n += 1
            else:
                d.unlink(missing_ok=True)
        return n
