"""Gate speed benchmark: run the gate (``pytest -m gpu baselines`` or the CPU tier ``-m smoke``) cold and
warm, and write one JSON with the wall time, pytest's own time and every entry's phase breakdown.

A benchmark, not a test: it asserts nothing about time. Each run is a fresh ``python -m pytest`` process
(imports included, as CI pays them) with its own ``--pplgate-report`` directory; the phases (load / prepare /
tokenize / evaluate seconds), origin, caches and tokens/s per entry are read back from the report's
``pplgate-results.json``.

* **cold**: the cache directory (``--cache-dir``, default a fresh folder under ``--work-dir``) is emptied
  first, so quantization and the GGUF de-quantization are included. ``--seed-cache DIR`` copies the entries
  of DIR in after emptying (e.g. keep a CPU AWQ entry that takes minutes to build) and the JSON says so.
* **warm**: ``--warm N`` runs (default 2) on the cache the cold run left.
* ``--src NAME=PATH`` (repeatable) runs the same sequence with ``PATH`` first on ``PYTHONPATH`` (e.g. the
  ``src/`` of another checkout), interleaving the warm runs, so old and new compare in one run on one box.

The machine's load average, CPU count, GPU and library versions go into the JSON too (a shared machine's
timings mean little without them).

  python bench/gate_speed.py results/gate-speed-h100.json --marker gpu
  python bench/gate_speed.py /tmp/gate-speed-cpu.json --marker smoke --seed-cache ~/.cache/pplgate/quant
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
_PYTEST_TIME = re.compile(r" in (\d+(?:\.\d+)?)s\b")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)s (setup|call|teardown)\s+(\S.*)$")


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for dist in ("torch", "transformers", "autoawq", "gguf", "safetensors", "pytest"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def _machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "sched_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "versions": _versions(),
    }
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
        info["gpus"] = [line.strip() for line in out.splitlines() if line.strip()]
    except (OSError, subprocess.SubprocessError):
        info["gpus"] = []
    try:
        info["git_commit"] = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        info["git_commit"] = os.environ.get("PPLGATE_GIT_COMMIT")
    return info


def _entries(report_dir: Path) -> list[dict[str, Any]]:
    """Per gate entry: status, ppl, origin, tokens/s and the phases, from the run's JSON report."""
    path = report_dir / "pplgate-results.json"
    if not path.is_file():
        return []
    records = json.loads(path.read_text(encoding="utf-8")).get("records", [])
    keep = ("nodeid", "status", "ppl", "origin", "wall_time_s", "prepare_time_s", "tokens_per_s", "phases")
    out = []
    for r in records:
        e = {k: r[k] for k in keep if k in r}
        ratios = [x["value"] for x in r.get("rules") or [] if x.get("type") == "speed" and "value" in x]
        if ratios:
            e["speed_ratios"] = ratios
        out.append(e)
    return out


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Over the warm runs: wall and pytest seconds, and per entry the spread of tokens/s, speed ratios, phases."""
    warm = [r for r in runs if r["label"].startswith("warm")]
    out: dict[str, Any] = {
        "warm_wall_s": [r["wall_s"] for r in warm],
        "warm_pytest_s": [r["pytest_s"] for r in warm],
        "entries": {},
    }
    for r in warm:
        for e in r["entries"]:
            s = out["entries"].setdefault(e["nodeid"], {"tokens_per_s": [], "speed_ratios": [], "phases": []})
            s["tokens_per_s"].append(e.get("tokens_per_s"))
            s["speed_ratios"].append(e.get("speed_ratios"))
            s["phases"].append(e.get("phases"))
    for s in out["entries"].values():
        speeds = [x for x in s["tokens_per_s"] if x]
        if speeds:
            s["tokens_per_s_spread"] = round((max(speeds) - min(speeds)) / (sum(speeds) / len(speeds)), 4)
    return out


def _durations(stdout: str) -> list[dict[str, Any]]:
    """pytest's ``--durations`` lines (setup/call of every test, gate entries and fidelity tests alike)."""
    out = []
    for line in stdout.splitlines():
        m = _DURATION.match(line)
        if m:
            out.append({"seconds": float(m.group(1)), "when": m.group(2), "nodeid": m.group(3).strip()})
    return out


def run_gate(
    *, src: str | None, marker: str, paths: list[str], cache_dir: Path, report_dir: Path, extra: list[str]
) -> dict[str, Any]:
    """One ``python -m pytest`` of the gate; its wall time, pytest's time, exit code, entries and durations."""
    env = dict(os.environ, PPLGATE_CACHE_DIR=str(cache_dir))
    if src:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    cmd = [sys.executable, "-m", "pytest", "-m", marker, *paths, "-p", "no:cacheprovider", "-q"]
    cmd += ["--durations=0", "--durations-min=0.5", "--pplgate-report", str(report_dir), *extra]
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    tail = proc.stdout.strip().splitlines()[-1:] or [""]
    m = _PYTEST_TIME.search(tail[0])
    return {
        "command": " ".join(cmd),
        "exit_code": proc.returncode,
        "wall_s": round(wall, 2),
        "pytest_s": float(m.group(1)) if m else None,
        "summary": tail[0],
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "entries": _entries(report_dir),
        "durations": _durations(proc.stdout),
        "stderr_tail": proc.stderr[-2000:] if proc.returncode not in (0,) else "",
    }


def _empty(cache_dir: Path, seed: Path | None) -> None:
    shutil.rmtree(cache_dir, ignore_errors=True)
    cache_dir.mkdir(parents=True)
    if seed is not None:
        for item in seed.iterdir():
            if item.name.startswith("."):
                continue
            dest = cache_dir / item.name
            shutil.copytree(item, dest) if item.is_dir() else shutil.copy2(item, dest)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("out", help="the JSON file to write (its directory must exist)")
    ap.add_argument("--marker", default="gpu", help="gpu (the GPU tier) or smoke (the CPU tier); default gpu")
    ap.add_argument("--paths", nargs="+", default=["baselines"], help="what pytest collects (default: baselines)")
    ap.add_argument("--warm", type=int, default=2, help="warm runs after the cold one (default 2)")
    ap.add_argument("--no-cold", action="store_true", help="skip the cold run (the cache dir is used as it is)")
    ap.add_argument("--cache-dir", type=Path, help="the cache the runs use (emptied for the cold run)")
    ap.add_argument("--seed-cache", type=Path, help="copy this cache's entries in after emptying (cold run)")
    ap.add_argument("--work-dir", type=Path, help="reports and the default cache (default: a temp dir)")
    ap.add_argument("--src", action="append", default=[], metavar="NAME=PATH", help="PATH first on PYTHONPATH")
    ap.add_argument("pytest_args", nargs="*", help="after --: extra pytest arguments")
    args = ap.parse_args(argv)
    out = Path(args.out)
    if not out.parent.is_dir():
        ap.error(f"{out.parent} does not exist")
    srcs = [tuple(s.split("=", 1)) for s in args.src] or [("current", "")]
    if any(len(s) != 2 for s in srcs):
        ap.error("--src takes NAME=PATH")
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="pplgate-gate-speed-"))
    work.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "date": datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
        "marker": args.marker,
        "paths": args.paths,
        "machine": _machine(),
        "seed_cache": str(args.seed_cache) if args.seed_cache else None,
        "runs": {name: [] for name, _ in srcs},
    }

    def one(name: str, path: str, label: str) -> None:
        cache = args.cache_dir if args.cache_dir and len(srcs) == 1 else (args.cache_dir or work) / f"cache-{name}"
        if label == "cold":
            _empty(cache, args.seed_cache)
        report = work / f"report-{name}-{label}"
        shutil.rmtree(report, ignore_errors=True)
        run = run_gate(
            src=path or None, marker=args.marker, paths=args.paths, cache_dir=cache, report_dir=report,
            extra=args.pytest_args,
        )  # fmt: skip
        run["label"] = label
        result["runs"][name].append(run)
        print(f"{name:>10} {label:>6}: wall {run['wall_s']:7.1f}s  pytest {run['pytest_s']}s  {run['summary']}")
        out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")  # partial results survive a kill

    if not args.no_cold:
        for name, path in srcs:
            one(name, path, "cold")
    for i in range(args.warm):
        for name, path in srcs:
            one(name, path, f"warm{i + 1}")
    result["summary"] = {name: summarize(runs) for name, runs in result["runs"].items()}
    out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
