"""Where pplgate finds its offline inputs: one lookup order for the CLI, the pytest plugin and scripts.

Each input is looked for in this order; the first step that names or finds it wins:

1. the option (``--dataset`` on the CLI, ``--pplgate-dataset`` under pytest; a script's own argument);
2. the input's environment variable (``PPLGATE_WIKITEXT``; ``PPLGATE_CALIBRATION``);
3. the shared reference folder, when present: ``$PPLGATE_SHARED`` if that is set (then nothing else),
   else ``shared/`` beside the checkout. The checkout is (a) the first directory holding a
   ``pyproject.toml`` or ``.git``, going up from the current working directory, and (b) the checkout
   that the imported pplgate package lives in (``src/pplgate`` of an editable or ``src`` install:
   ``Path(pplgate.__file__).resolve().parents[2]``, used when it holds a ``pyproject.toml``).
   Inside the folder: ``data/wikitext-2-raw-v1/`` (WikiText-2) and
   ``data/calibration/python-3.11-docs-prose.jsonl`` (the AWQ calibration corpus). A development
   convenience of a checkout: an installed pplgate never needs it;
4. the user data folder (:func:`data_dir`, laid out like ``<shared>/data``): ``wikitext-2-raw-v1/``, where
   ``pplgate data fetch`` puts the test split, and ``calibration/python-3.11-docs-prose.jsonl``;
5. the Hugging Face hub (WikiText-2 only): first :func:`hub_refusal` says, in seconds, whether the hub
   can be used at all, so that an offline machine fails at once instead of after ~28 s of retries.

An explicit option or environment variable is final: a path there that does not exist is an error,
not a reason to look further.
"""

from __future__ import annotations

import os
import socket
import threading
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

SHARED_ENV = "PPLGATE_SHARED"
DATA_DIR_ENV = "PPLGATE_DATA_DIR"
DATA_STEP = "the pplgate data folder"
WIKITEXT_ENV = "PPLGATE_WIKITEXT"
CALIBRATION_ENV = "PPLGATE_CALIBRATION"
REQUIRE_ENV = "PPLGATE_REQUIRE_SHARED"
WIKITEXT_IN_SHARED = ("data", "wikitext-2-raw-v1")
CALIBRATION_IN_SHARED = ("data", "calibration", "python-3.11-docs-prose.jsonl")
HUB_DEFAULT_ENDPOINT = "https://huggingface.co"
PROBE_TIMEOUT_S = 3.0
_TRUE = ("1", "true", "yes", "on")


@dataclass(frozen=True)
class Lookup:
    """The result of looking for one input: the path found (None: not found locally) and how.

    ``step`` names the step that found it (e.g. ``"--dataset"``, ``"$PPLGATE_WIKITEXT"``,
    ``"../shared beside the checkout /src/pplgate"``); ``tried`` lists every step looked at, each
    with what it gave, for error messages.
    """

    path: Path | None
    step: str
    tried: tuple[str, ...]


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in _TRUE


def inputs_required() -> bool:
    """True under CI (``$CI`` true) or with ``PPLGATE_REQUIRE_SHARED=1``: missing inputs fail instead of skip."""
    return _truthy("CI") or _truthy(REQUIRE_ENV)


def package_checkout() -> Path | None:
    """The checkout the imported pplgate lives in (``<checkout>/src/pplgate``), if it has a pyproject.toml."""
    import pplgate

    root = Path(pplgate.__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").is_file() else None


def cwd_checkout(start: Path | None = None) -> Path | None:
    """The first directory holding ``pyproject.toml`` or ``.git``, from ``start`` (the cwd) upwards."""
    try:
        here = (start or Path.cwd()).resolve()
    except OSError:  # the working directory was removed
        return None
    for d in (here, *here.parents):
        if (d / "pyproject.toml").is_file() or (d / ".git").exists():
            return d
    return None


def shared_candidates() -> list[tuple[str, Path]]:
    """``(step, folder)`` pairs for the shared folder, in lookup order (see the module doc)."""
    env = os.environ.get(SHARED_ENV)
    if env:
        return [(f"${SHARED_ENV}", Path(env).expanduser())]
    out: list[tuple[str, Path]] = []
    for checkout in (cwd_checkout(), package_checkout()):
        if checkout is not None and all(c.parent != checkout for _, c in out):
            out.append((f"../shared beside the checkout {checkout}", checkout.parent / "shared"))
    return out


def find_shared() -> Path | None:
    """The shared reference folder (see :func:`shared_candidates`), or None when there is none."""
    for _, folder in shared_candidates():
        if folder.is_dir():
            return folder
    return None


def data_dir() -> Path:
    """The user data folder that ``pplgate data fetch`` fills (laid out like ``<shared>/data``):
    ``$PPLGATE_DATA_DIR``, else ``$XDG_CACHE_HOME/pplgate/data``, else ``~/.cache/pplgate/data``."""
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "pplgate" / "data"


@dataclass(frozen=True)
class Step:
    """One place an input is looked for: ``path`` None when the step names nothing (``note``: the line saying
    why); ``final`` when a path named there is used even if it does not exist (an environment variable)."""

    name: str
    path: Path | None
    final: bool = False
    note: str = ""


def lookup_steps(env: str, rel: tuple[str, ...]) -> list[Step]:
    """The places after the option, in lookup order: ``$env``, the shared folder(s) (``<shared>/<rel>``), the
    user data folder (``<data_dir>/<rel without its leading "data">``)."""
    value = os.environ.get(env)
    steps = [Step(f"${env}", Path(value).expanduser() if value else None, True, f"${env}: not set")]
    candidates = shared_candidates()
    if not candidates:
        why = (
            f"${SHARED_ENV} not set and no checkout found (no pyproject.toml or .git above {Path.cwd()}, "
            "pplgate not imported from a checkout)"
        )
        steps.append(Step(f"${SHARED_ENV}", None, note=why))
    steps += [Step(step, folder.joinpath(*rel)) for step, folder in candidates]
    steps.append(Step(DATA_STEP, data_dir().joinpath(*rel[1:])))
    return steps


def _find(option: str | None, value: str | os.PathLike[str] | None, env: str, rel: tuple[str, ...]) -> Lookup:
    tried: list[str] = []
    if value is not None:
        return Lookup(Path(value).expanduser(), option or "path", (f"{option or 'path'} {value}",))
    if option:
        tried.append(f"{option}: not given")
    for step in lookup_steps(env, rel):
        if step.path is None:
            tried.append(step.note)
        elif step.final:
            return Lookup(step.path, step.name, (*tried, f"{step.name}={step.path}"))
        elif step.path.exists():
            return Lookup(step.path, step.name, (*tried, f"{step.name}: {step.path}"))
        else:
            tried.append(f"{step.name}: {step.path} does not exist")
    return Lookup(None, "", tuple(tried))


def find_wikitext(path: str | os.PathLike[str] | None = None, *, option: str = "--dataset") -> Lookup:
    """Where the WikiText-2 test split is: ``path`` (the value of ``option``), ``$PPLGATE_WIKITEXT``,
    the shared folder's ``data/wikitext-2-raw-v1``, the data folder's ``wikitext-2-raw-v1``; ``Lookup.path`` is
    None when the hub comes next."""
    return _find(option, path, WIKITEXT_ENV, WIKITEXT_IN_SHARED)


def find_calibration(path: str | os.PathLike[str] | None = None, *, option: str | None = None) -> Lookup:
    """Where the offline AWQ calibration corpus is: ``path``, ``$PPLGATE_CALIBRATION``, the shared
    folder's ``data/calibration/python-3.11-docs-prose.jsonl``, the data folder's
    ``calibration/python-3.11-docs-prose.jsonl``; ``Lookup.path`` None: not found."""
    return _find(option, path, CALIBRATION_ENV, CALIBRATION_IN_SHARED)


# --------------------------------------------------------------------------- the hub, quickly


def hub_endpoint() -> str:
    """``$HF_ENDPOINT`` or https://huggingface.co."""
    return (os.environ.get("HF_ENDPOINT") or HUB_DEFAULT_ENDPOINT).rstrip("/")


def hub_offline() -> bool:
    """Offline mode asked for by the user: ``HF_HUB_OFFLINE``, ``HF_DATASETS_OFFLINE`` or ``TRANSFORMERS_OFFLINE``."""
    return any(_truthy(v) for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _probe_target(url: str) -> tuple[str, int, str]:
    """``(host, port, what)`` a connection to ``url`` starts with: its proxy's, where one applies."""
    u = urllib.parse.urlsplit(url)
    host = u.hostname or ""
    port = u.port or (443 if u.scheme == "https" else 80)
    proxy = urllib.request.getproxies().get(u.scheme)
    if proxy and not urllib.request.proxy_bypass(host):
        p = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        if p.hostname:
            return p.hostname, p.port or 80, f"the proxy {p.hostname}:{p.port or 80} for {host}"
    return host, port, f"{host}:{port}"


def hub_unreachable(timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """Why the hub endpoint cannot be reached (a TCP connect within ``timeout`` s, DNS included), or None."""
    url = hub_endpoint()
    host, port, what = _probe_target(url)
    if not host:
        return f"HF_ENDPOINT={url!r} names no host"
    outcome: list[str | None] = []

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            outcome.append(None)
        except OSError as exc:
            outcome.append(f"{type(exc).__name__}: {exc}")

    t = threading.Thread(target=connect, daemon=True)  # a thread, so a hanging DNS lookup is bounded too
    t.start()
    t.join(timeout + 0.5)
    if not outcome:
        return f"cannot connect to {what} within {timeout:g} s"
    return None if outcome[0] is None else f"cannot connect to {what} ({outcome[0]})"


def hub_refusal(timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """Why pplgate will not call ``datasets.load_dataset`` now, or None to go ahead.

    Offline mode (``HF_HUB_OFFLINE=1`` etc.): go ahead only when ``datasets`` itself runs offline (it then
    reads the local Hugging Face cache and never touches the network); else refuse at once. Online: a
    quick TCP probe of the hub endpoint (or its proxy) decides.
    """
    if hub_offline():
        try:
            import datasets.config
        except ImportError:
            return "HF_HUB_OFFLINE is set (and the 'datasets' package is not installed)"
        if getattr(datasets.config, "HF_HUB_OFFLINE", False):
            return None
        return "HF_HUB_OFFLINE is set"
    return hub_unreachable(timeout)
