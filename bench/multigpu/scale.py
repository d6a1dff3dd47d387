"""Gate scaling on one multi-GPU machine: the same gate timed with -n 1, 2, 4 (one xdist worker per GPU).

    python bench/multigpu/scale.py prepare --work W --tokenizer TOK [--size 7b] [--n-models 4] [--windows K]
    python bench/multigpu/scale.py time --work W --out OUT [--workers 1,2,4]

``prepare`` (not timed) builds N random-weight Llama models of the chosen shape, each directly on a
GPU (models spread over the GPUs, built in parallel) and saved to W/models, writes one baseline file
per model (fp16 + rtn w4 g128 by default), and records them with one ``--update-baselines`` session.
``time`` runs the recorded gate once per worker count (``-n K --dist loadgroup``: a model's entries on
one worker, each worker pinned to its own GPU) and writes OUT/scale.json and OUT/scale.txt: wall time,
speed-up against -n 1, and per worker its start-up, busy time (load/quantize vs scoring, from the
gate's JSON report) and idle tail, from the timelines W/conftest.py writes.

CPU check of the same code: ``--device cpu --size tiny --windows 2`` (no GPU needed).
The WikiText-2 test split comes from $PPLGATE_WIKITEXT (or the other places pplgate looks).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SRC = HERE.parents[1] / "src"


def env_with_src(src: Path = SRC, **extra: str) -> dict[str, str]:
    """This process's environment with pplgate's ``src`` (and this folder: phase_probe) first on PYTHONPATH."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(src), str(HERE), *filter(None, [env.get("PYTHONPATH")])])
    env.update(extra)
    return env


def gpu_ids() -> list[str]:
    """The GPUs this process may use (``CUDA_VISIBLE_DEVICES`` or all), without creating a CUDA context."""
    raw = os.environ.get("CUDA_VISIBLE_DEVICES")
    if raw is not None:
        return [x.strip() for x in raw.split(",") if x.strip() and x.strip() != "-1"]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def pytest_cmd(work: Path, *args: str) -> list[str]:
    return [
        sys.executable, "-m", "pytest", "-p", "pplgate.plugin", "-p", "no:cacheprovider",
        "-c", str(work / "pytest.ini"), "--rootdir", str(work), str(work / "baselines"), "-m", "pplgate", "-q",
        *args,
    ]  # fmt: skip


# --------------------------------------------------------------------------- prepare


def build_models(args: argparse.Namespace, work: Path) -> float:
    """Run make_gate_models.py once per model; on CUDA one builder thread per GPU, models i % n_gpus."""
    base = [
        sys.executable, str(HERE / "make_gate_models.py"), "--out", str(work), "--n-models", str(args.n_models),
        "--size", args.size, "--tokenizer", args.tokenizer, "--device", args.device, "--batch-size",
        str(args.batch_size), "--variants", args.variants, "--rtn-group", str(args.rtn_group),
    ]  # fmt: skip
    if args.windows:
        base += ["--max-windows", str(args.windows)]
    if args.force:
        base += ["--skip-existing"]  # models a cut-off prepare already saved are kept
    gpus = gpu_ids() if args.device.startswith("cuda") else [""]
    if args.device.startswith("cuda") and not gpus:
        sys.exit("scale.py: --device cuda, but no GPU is visible")
    (work / "logs").mkdir(parents=True, exist_ok=True)
    failed: list[str] = []

    def builder(slot: int) -> None:
        for i in range(slot, args.n_models, len(gpus)):
            extra = {"CUDA_VISIBLE_DEVICES": gpus[slot]} if gpus[slot] else {}
            log = work / "logs" / f"build-{i}.log"
            with log.open("w") as fh:
                rc = subprocess.call([*base, "--only", str(i)], env=env_with_src(**extra), stdout=fh, stderr=fh)
            if rc:
                failed.append(f"model {i} (exit {rc}, see {log})")

    t0 = time.time()
    threads = [threading.Thread(target=builder, args=(s,)) for s in range(min(len(gpus), args.n_models))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failed:
        sys.exit("scale.py: building failed: " + "; ".join(failed))
    return time.time() - t0


def prepare(args: argparse.Namespace) -> None:
    work = Path(args.work).resolve()
    if work.exists() and any(work.iterdir()) and not args.force:
        sys.exit(f"scale.py: {work} is not empty; pass --force to reuse it (complete models there are kept)")
    shutil.rmtree(work / "baselines", ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    (work / "pytest.ini").write_text("[pytest]\n")
    shutil.copy(HERE / "timeline_conftest.py", work / "conftest.py")
    build_s = build_models(args, work)
    print(f"built {args.n_models} {args.size} models in {build_s:.1f}s", flush=True)
    n_rec = min(len(gpu_ids()), args.n_models) if args.device.startswith("cuda") else 0
    xdist = ["-n", str(n_rec), "--dist", "loadgroup"] if n_rec > 1 else ["-p", "no:xdist"]
    t0 = time.time()
    log = work / "logs" / "record.log"
    with log.open("w") as fh:
        rc = subprocess.call(
            pytest_cmd(work, "--update-baselines", "--pplgate-report", str(work / "record-report"), *xdist),
            env=env_with_src(),
            stdout=fh,
            stderr=subprocess.STDOUT,
        )
    record_s = time.time() - t0
    if rc:
        print(log.read_text()[-4000:])
        sys.exit(f"scale.py: recording the baselines failed (exit {rc}); log: {log}")
    info = {**vars(args), "build_s": round(build_s, 1), "record_s": round(record_s, 1), "record_workers": n_rec}
    (work / "prepare.json").write_text(json.dumps(info, indent=1))
    print(f"recorded the baselines in {record_s:.1f}s ({max(n_rec, 1)} process(es)); {work / 'prepare.json'}")


# --------------------------------------------------------------------------- time


def per_worker(timelines: list[dict], records: dict[str, dict], launch: float) -> dict[str, dict[str, Any]]:
    """Per worker: start-up (launch -> first test), busy time split into prepare / eval / other, the tests."""
    out: dict[str, dict[str, Any]] = {}
    for tl in timelines:
        tests = [e for e in tl["events"] if "nodeid" in e]
        if not tests:
            continue
        items = []
        for e in sorted(tests, key=lambda e: e["start"]):
            rec = records.get(e["nodeid"], {})
            dur = e["end"] - e["start"]
            prep, ev = rec.get("prepare_time_s") or 0.0, rec.get("wall_time_s") or 0.0
            items.append(
                {
                    "nodeid": e["nodeid"],
                    "start_s": round(e["start"] - launch, 2),
                    "end_s": round(e["end"] - launch, 2),
                    "prepare_s": round(prep, 2),
                    "eval_s": round(ev, 2),
                    "other_s": round(dur - prep - ev, 2),  # text/tokens on a worker's first test, judging, freeing
                    "status": rec.get("status"),
                    "origin": rec.get("origin"),
                }
            )
        out[tl["worker"]] = {
            "gpus": tl.get("cuda_visible_devices"),
            "conftest_imported_s": round(tl["conftest_imported"] - launch, 2),
            "startup_s": items[0]["start_s"],
            "last_end_s": items[-1]["end_s"],
            "busy_s": round(sum(e["end"] - e["start"] for e in tests), 2),
            "prepare_s": round(sum(i["prepare_s"] for i in items), 2),
            "eval_s": round(sum(i["eval_s"] for i in items), 2),
            "other_s": round(sum(i["other_s"] for i in items), 2),
            "models": sorted({i["nodeid"].split("::")[0].rsplit("/", 1)[-1].removesuffix(".yaml") for i in items}),
            "items": items,
        }
    return out


def probe_marks(log: Path) -> dict[str, list[list[Any]]]:
    """phase_probe's lines in a session's log: per process, ``[seconds since launch, phase]``."""
    marks: dict[str, list[list[Any]]] = {}
    for line in log.read_text(errors="replace").splitlines():
        at = line.find("PROBE ")
        if at < 0:
            continue
        parts = line[at:].split(" ", 3)
        if len(parts) == 4:
            marks.setdefault(parts[1], []).append([float(parts[2]), parts[3]])
    return marks


def run_once(work: Path, out: Path, n: int, src: Path = SRC, label: str = "") -> dict[str, Any]:
    """One timed gate session with ``-n n``; returns its wall time, outcome and per-worker breakdown."""
    name = f"n{n}{label}"
    rep, tl_dir = out / f"gate-{name}", out / f"timeline-{name}"
    for d in (rep, tl_dir):
        shutil.rmtree(d, ignore_errors=True)
    log = out / f"gate-{name}.log"
    cmd = pytest_cmd(work, "-p", "phase_probe", "-n", str(n), "--dist", "loadgroup", "--pplgate-report", str(rep))
    launch = time.time()
    with log.open("w") as fh:
        env = env_with_src(src, PPLGATE_TIMELINE_DIR=str(tl_dir), PHASE_PROBE_T0=repr(launch))
        rc = subprocess.call(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT)
    wall = time.time() - launch
    records = {}
    if (rep / "pplgate-results.json").is_file():
        records = {r["nodeid"]: r for r in json.loads((rep / "pplgate-results.json").read_text())["records"]}
    timelines = [json.loads(p.read_text()) for p in sorted(tl_dir.glob("*.json"))]
    workers = per_worker(timelines, records, launch)
    statuses: dict[str, int] = {}
    for r in records.values():
        statuses[r["status"]] = statuses.get(r["status"], 0) + 1
    last_end = max((w["last_end_s"] for w in workers.values()), default=wall)
    busy = [w["busy_s"] for w in workers.values()] or [0.0]
    return {
        "workers": n,
        "src": str(src),
        "label": label,
        "wall_s": round(wall, 2),
        "rc": rc,
        "statuses": statuses,
        "log": str(log),
        "startup_max_s": max((w["startup_s"] for w in workers.values()), default=None),
        "imbalance_s": round(max(busy) - sum(busy) / len(busy), 2),
        "teardown_s": round(wall - last_end, 2),
        "per_worker": workers,
        "phases": probe_marks(log),
    }


def summary(runs: list[dict], prep: dict, gpus: list[str]) -> list[str]:
    windows = prep.get("windows") or "all"
    lines = [
        f"gate scaling: {prep['n_models']} random-weight {prep['size']} models x ({prep['variants']}), "
        f"{windows} windows, batch {prep['batch_size']}, device {prep['device']}, GPUs: {', '.join(gpus) or 'none'}",
        f"prepare (not timed): build {prep['build_s']}s, record {prep['record_s']}s",
    ]
    for r in runs:
        base = next((b["wall_s"] for b in runs if b["workers"] == 1 and b["label"] == r["label"]), None)
        speed = f"{base / r['wall_s']:.2f}x ({base / r['wall_s'] / r['workers']:.0%} of ideal)" if base else "-"
        lines.append(
            f"-n {r['workers']}{r['label']}: wall {r['wall_s']:.1f}s  speed-up {speed}  rc {r['rc']}  {r['statuses']}  "
            f"start-up (launch -> last worker's first test) {r['startup_max_s']}s  "
            f"imbalance (max - mean busy) {r['imbalance_s']}s  teardown {r['teardown_s']}s"
        )
        for w, d in sorted(r["per_worker"].items()):
            lines.append(
                f"    {w} (GPU {d['gpus']}): start-up {d['startup_s']}s, busy {d['busy_s']}s = prepare "
                f"{d['prepare_s']} + eval {d['eval_s']} + other {d['other_s']}, done at {d['last_end_s']}s; "
                f"{', '.join(d['models'])}"
            )
    return lines


def gpu_names(ids: list[str]) -> list[str]:
    """GPU names from nvidia-smi (this process creates no CUDA context); the ids where it is missing."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=index,name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return ids
    names = dict(line.split(", ", 1) for line in out.strip().splitlines() if ", " in line)
    return [f"{i}: {names.get(i, '?')}" for i in ids] if names else ids


def versions() -> dict[str, str | None]:
    env: dict[str, str | None] = {"python": sys.version.split()[0]}
    for mod in ("torch", "transformers", "accelerate", "xdist", "pytest"):
        try:
            env[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - a report field, not a requirement
            env[mod] = None
    return env


def time_runs(args: argparse.Namespace) -> None:
    """Each worker count in turn; scale.json/scale.txt are rewritten after every run (a cut-off keeps the rest)."""
    work, out = Path(args.work).resolve(), Path(args.out).resolve()
    prep = json.loads((work / "prepare.json").read_text())
    out.mkdir(parents=True, exist_ok=True)
    gpus = gpu_ids() if prep["device"].startswith("cuda") else []
    names = gpu_names(gpus) if gpus else []
    wanted = [int(x) for x in args.workers.split(",")]
    counts = [n for n in wanted if not gpus or n <= len(gpus)]
    skipped = [f"-n {n}: not run, only {len(gpus)} GPU(s) visible" for n in wanted if n not in counts]
    payload: dict[str, Any] = {"prepare": prep, "gpus": names, "versions": versions(), "runs": []}
    lines: list[str] = []
    src = Path(args.src).resolve() if args.src else SRC
    label = f"-{args.label}" if args.label else ""
    if (out / "scale.json").is_file():  # a second invocation into the same OUT (another --label) adds its runs
        earlier = json.loads((out / "scale.json").read_text()).get("runs", [])
        payload["runs"] = [r for r in earlier if r.get("label", "") != label]  # a rerun replaces its label's
    for n in counts:
        r = run_once(work, out, n, src, label)
        print(f"-n {n}{label}: wall {r['wall_s']}s rc {r['rc']} {r['statuses']}", flush=True)
        payload["runs"].append(r)
        lines = summary(payload["runs"], prep, names) + skipped
        payload["summary"] = lines
        (out / "scale.json").write_text(json.dumps(payload, indent=1))
        (out / "scale.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if any(r["rc"] for r in payload["runs"]):
        sys.exit(1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    pr = sub.add_parser("prepare", help="build the models, write and record the baselines (not timed)")
    pr.add_argument("--work", required=True, help="where models (13.5 GB each for 7b) and baselines go")
    pr.add_argument("--tokenizer", required=True, help="tokenizer directory (Llama-2)")
    pr.add_argument("--size", default="7b", choices=["tiny", "1b", "7b"])
    pr.add_argument("--n-models", type=int, default=4)
    pr.add_argument("--windows", type=int, default=None, help="windows per entry (default: all, 166 for Llama-2)")
    pr.add_argument("--device", default="cuda", help="cuda (one GPU per builder) or cpu")
    pr.add_argument("--batch-size", type=int, default=4)
    pr.add_argument("--variants", default="fp16,rtn")
    pr.add_argument("--rtn-group", type=int, default=128)
    pr.add_argument(
        "--force", action="store_true", help="reuse a non-empty --work directory (its saved models are kept)"
    )
    tm = sub.add_parser("time", help="time the recorded gate with -n 1, 2, 4")
    tm.add_argument("--work", required=True)
    tm.add_argument("--out", required=True)
    tm.add_argument("--workers", default="1,2,4", help="worker counts, one timed session each")
    tm.add_argument("--src", help="the pplgate src/ to time (default: this checkout's; e.g. an older commit's)")
    tm.add_argument("--label", default="", help="a name for these runs (file names, summary), e.g. the commit")
    args = ap.parse_args()
    prepare(args) if args.cmd == "prepare" else time_runs(args)


if __name__ == "__main__":
    main()
