"""``pplgate report merge DIR... [--out DIR] [--apply-updates [--rootdir DIR]]``: one verdict for many shards.

Exit status: 0 when every entry passed and every shard reported exactly once, 1 when the merged gate
failed (a failing entry, a missing or duplicated entry, a missing shard, shards on other commits or
pplgate versions, a pass that fails the rules of its baseline file under --rootdir, updates not written),
2 for unusable inputs (no report found, malformed JSON, a baseline file not found, an update whose entry
was re-recorded after the shards ran).
"""

from __future__ import annotations

import argparse
import os

from pplgate.gate import merge, reports


def add_parser(sub: argparse._SubParsersAction) -> None:
    rp = sub.add_parser("report", help="merge the gate's JSON reports of several shards into one verdict")
    rsub = rp.add_subparsers(dest="report_command", required=True)
    mg = rsub.add_parser(
        "merge",
        help="merge --pplgate-report directories (of --pplgate-shard K/N runs, or any runs) into one report",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    mg.add_argument(
        "dirs", nargs="+", metavar="DIR", help="report directories (a directory without a report: its sub-directories)"
    )
    mg.add_argument("--out", metavar="DIR", help="write the merged pplgate-results.json and pplgate-summary.md here")
    mg.add_argument(
        "--apply-updates",
        action="store_true",
        help="write the baseline updates the shards queued (--update-baselines) into the baseline files "
        "(only when every shard reported and no entry is missing or duplicated)",
    )
    mg.add_argument(
        "--rootdir",
        default=".",
        help="the checkout the reports' file paths are relative to (default: .); every passing record is "
        "judged again against the rules of its baseline file there",
    )
    mg.add_argument(
        "--baselines-dir",
        default=None,
        help="the only directory --apply-updates may write into (default: <rootdir>/baselines)",
    )


def _check_out(out: str, dirs: list) -> None:
    """``--out`` may not hold, or be inside, an input (the merge would replace a shard's own report)."""
    o = os.path.realpath(out)
    for d in dirs:
        r = os.path.realpath(d)
        if o == r or o.startswith(r + os.sep) or r.startswith(o + os.sep):
            raise merge.MergeError(f"--out {out} overlaps the input {d}; write the merged report elsewhere")


def cmd_report(args: argparse.Namespace) -> int:
    dirs = merge.report_dirs(args.dirs)
    if args.out:
        _check_out(args.out, dirs)
    inputs = [merge.load(d) for d in dirs]
    merged = merge.merge(inputs, args.rootdir, args.baselines_dir)  # re-judges against the checkout's files
    for s in merged.shards:
        print(f"input {s['dir']}: shard {s['shard'] or '-'}, {s['records']} record(s), pytest exit {s['exitstatus']}")
    for line in reports.terminal_table(merged.records):
        print(line)
    for p in merged.notes + merged.problems:
        print(f"pplgate merge: {p}")
    failed_writes = 0
    if args.apply_updates and merged.problems:
        print("pplgate merge: NOT applying the baseline updates: the coverage is incomplete (above); nothing written")
    elif args.apply_updates:
        rows = merge.apply_updates(merged, args.rootdir, args.baselines_dir)
        merged.update_rows = rows
        for line in reports.update_table(rows):
            print(f"pplgate merge: wrote {line}")
        failed_writes = sum(not r.get("applied", True) for r in rows)
        if not rows:
            print("pplgate merge: no queued updates in the reports (were the shards run with --update-baselines?)")
    if args.out:
        for p in merge.write(merged, args.out):
            print(f"pplgate report: {p}")
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        with open(summary, "a", encoding="utf-8") as fh:
            fh.write(merge.markdown(merged) + "\n")
    print(merged.verdict().replace("**", ""))
    return 0 if merged.passed and not failed_writes else 1


def main(argv: list[str] | None = None) -> int:
    """``python -m pplgate.report_cmd report merge DIR...``: the command without importing torch (a light merge job)."""
    import sys

    from pplgate.errors import PplgateError

    parser = argparse.ArgumentParser(prog="pplgate")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return cmd_report(args)
    except PplgateError as exc:
        print(f"pplgate: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
