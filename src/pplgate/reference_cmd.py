"""``pplgate reference save`` / ``show`` and ``pplgate compare --reference-file``: KL divergence against a stored
top-K reference (:mod:`pplgate.protocol.reference_file`), so that a runner never loads the reference model.

``save`` scores the reference (``--model`` with ``--variant``, default the float kind of ``--dtype``) on the
canonical windows and writes its top-K file; ``show`` checks a file (size, content sha256) and prints what it
was written for; ``compare --reference-file`` scores only ``--model`` and gives ``compare``'s JSON fields. This
module cannot import :mod:`pplgate.cli` (cli imports it): cli hands it the helpers it shares (:class:`Helpers`).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pplgate.errors import ProtocolError
from pplgate.models.registry import make_variant
from pplgate.models.source import DEFAULT_MODEL, DEVICE_NAMES, DTYPE_CHOICES, resolve_dtype, resolve_source
from pplgate.protocol.reference_file import LOGPROB_DTYPES, StoredReference
from pplgate.protocol.stored_compare import DEFAULT_TAIL_SAMPLES, DEFAULT_TOP_K, compare_to_reference, save_reference


@dataclass(frozen=True)
class Helpers:
    """What this module uses of :mod:`pplgate.cli`."""

    parse_spec: Callable[..., tuple[str, dict]]  # parse_variant_spec
    check_args: Callable[[argparse.Namespace], None]  # _check_eval_args (seqlen, batch size, windows, device, --json)
    measurer: Callable[..., Any]  # _measurer(args, progress=...)
    check_output: Callable[[str, str], None]  # check_output_file
    write_json: Callable[[Any, str], None]  # write_json (--json)


def add_parser(sub: argparse._SubParsersAction, data_args: Callable[[argparse.ArgumentParser], None]) -> None:
    rp = sub.add_parser("reference", help="write or check a stored top-K reference (for compare --reference-file)")
    rsub = rp.add_subparsers(dest="reference_command", required=True)
    sv = rsub.add_parser(
        "save",
        help="score the reference once and write its per-position NLL, top-K ids and log-probs and tail mass",
    )
    sv.add_argument("--model", default=DEFAULT_MODEL, help=f"the reference (default: {DEFAULT_MODEL})")
    sv.add_argument("--gguf-file", help="GGUF file name inside --model")
    sv.add_argument("--revision", help="hub revision of --model")
    sv.add_argument("--variant", metavar="SPEC", help="variant of --model (default: --dtype's float kind)")
    sv.add_argument("--tokenizer", help="tokenizer id/dir if not the model's own")
    sv.add_argument("--dtype", default="auto", choices=list(DTYPE_CHOICES), help="float dtype (default auto)")
    sv.add_argument("--device", default="auto", help=f"{DEVICE_NAMES} (default auto: CUDA where available)")
    sv.add_argument("--batch-size", type=int, default=1, help="windows per forward pass")
    sv.add_argument("--max-windows", type=int, help="only the first N windows (a comparison then uses the same N)")
    sv.add_argument(
        "--top-k",
        type=int,
        default=DEFAULT_TOP_K,
        help=f"token ids kept per position (default {DEFAULT_TOP_K}; the KLD error per K: docs/KLD.md)",
    )
    sv.add_argument(
        "--logprob-dtype",
        default="float32",
        choices=list(LOGPROB_DTYPES),
        help="dtype of the stored top-K log-probs (default float32; float16: 1/3 smaller files)",
    )
    sv.add_argument(
        "--tail-samples",
        type=int,
        default=DEFAULT_TAIL_SAMPLES,
        metavar="S",
        help=f"ids sampled per position from the reference's tail (default {DEFAULT_TAIL_SAMPLES}): an unbiased "
        "KLD; 0: one tail bucket, a lower bound (docs/KLD.md)",
    )
    sv.add_argument("--out", required=True, metavar="FILE", help="the reference file to write (.safetensors)")
    sv.add_argument("--no-progress", action="store_true", help="no progress on stderr")
    data_args(sv)
    sh = rsub.add_parser("show", help="check a stored reference (size, content sha256) and print its metadata")
    sh.add_argument("file", help="the reference file")


def cmd_reference(args: argparse.Namespace, helpers: Helpers) -> int:
    if args.reference_command == "show":
        stored = StoredReference(args.file)
        print(f"{args.file}: intact (content sha256 {stored.meta['content_sha256']})")
        for key, value in sorted(stored.meta.items()):
            print(f"  {key}: {value}")
        return 0
    args.json_out = None
    helpers.check_args(args)
    helpers.check_output(args.out, "--out")
    if args.top_k < 1:
        raise ProtocolError(f"--top-k must be >= 1, got {args.top_k}")
    dtype = resolve_dtype(args.dtype, args.device)
    kind, params = helpers.parse_spec(args.variant) if args.variant else (dtype, {})
    make_variant(kind, params)  # bad params fail before any loading
    measurer = helpers.measurer(args, progress=not args.no_progress)
    src = resolve_source(args.model, args.gguf_file, args.revision)
    _, tokens, _ = measurer.tokens(src, args.tokenizer)
    prepared = measurer.prepare(src, kind=kind, params=params, device=args.device, tokenizer=args.tokenizer)
    identity = {
        "reference": src.describe(),
        "reference_variant": json.dumps({"kind": kind, **params}, sort_keys=True),
        "dataset_found_by": measurer.text().found_by,
    }
    info = save_reference(
        prepared.model,
        tokens,
        measurer.text(),
        args.out,
        top_k=args.top_k,
        seqlen=args.seqlen,
        batch_size=args.batch_size,
        max_windows=args.max_windows,
        logprob_dtype=args.logprob_dtype,
        tail_samples=args.tail_samples,
        identity=identity,
        progress=not args.no_progress,
        label=f"{src.short_name()} {kind} top-{args.top_k}",
    )
    print(
        f"wrote {args.out}: {info['n_windows']} windows, top-{args.top_k} {args.logprob_dtype}, "
        f"{info['bytes']:,} bytes ({info['bytes_per_window'] / 2**20:.2f} MiB/window) in {info['wall_time_s']:.1f}s, "
        f"ppl_reference={info['ppl_reference']:.6f}, content sha256 {info['content_sha256']}"
    )
    return 0


_REFERENCE_OPTIONS = ("reference", "reference_variant", "reference_gguf_file", "reference_revision")


def cmd_compare_file(args: argparse.Namespace, helpers: Helpers) -> int:
    """``pplgate compare --reference-file FILE``: the model against the stored reference."""
    given = [f"--{o.replace('_', '-')}" for o in _REFERENCE_OPTIONS if getattr(args, o, None)]
    if given:
        raise ProtocolError(
            f"--reference-file replaces {', '.join(given)}: the file is the reference; drop {' and '.join(given)}"
        )
    helpers.check_args(args)
    stored = StoredReference(args.reference_file)  # format, size and content hash: before any model loads
    dtype = resolve_dtype(args.dtype, args.device)
    kind, params = helpers.parse_spec(args.variant) if args.variant else (dtype, {})
    make_variant(kind, params)
    measurer = helpers.measurer(args, progress=not args.no_progress)
    src = resolve_source(args.model, args.gguf_file, args.revision)
    _, tokens, _ = measurer.tokens(src, args.tokenizer)
    text = measurer.text()
    stored.check_fingerprint(
        {
            "dataset_sha256": text.sha256,
            "tokenizer_sha256": tokens.tokenizer_sha256,
            "seqlen": args.seqlen,
            "bos_added": tokens.bos_added,
        }
    )  # before the model loads; the windows themselves are checked before its first forward
    prepared = measurer.prepare(src, kind=kind, params=params, device=args.device, tokenizer=args.tokenizer)
    result = compare_to_reference(
        stored,
        prepared.model,
        tokens,
        text,
        batch_size=args.batch_size,
        max_windows=args.max_windows,
        progress=not args.no_progress,
        label=f"{src.short_name()} {kind}",
    )
    result.extra.update(
        model=src.describe(),
        variant={"kind": kind, **params},
        reference=stored.meta.get("reference"),
        reference_variant=json.loads(stored.meta.get("reference_variant", "{}")),
        dataset_found_by=text.found_by,
        prepare_info={k: v for k, v in prepared.info.items() if isinstance(v, (str, int, float, bool))},
    )
    print(result.summary())
    kind_of = result.extra["reference_file"]["kld"]
    print(f"reference: {args.reference_file} (KLD: {kind_of}; top-1, Δp and both PPLs exact)")
    if args.json_out:
        helpers.write_json(result, args.json_out)
    return 0
