"""The records on the test reports: what a gate item or a ``ppl_regression.check`` call hands to the
controller (plain data: it travels from xdist workers), and the lines of updates not written."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from pplgate.gate import reports
from pplgate.gate.kld import KldMeasured, reference_identity
from pplgate.gate.record import GateRecord, Status
from pplgate.gate.spec import EntrySpec
from pplgate.gate.store import NLL_DECIMALS, PPL_DECIMALS
from pplgate.gate.verdict import Measured, Target, new_record
from pplgate.pytest_plugin.items import GateFailure, GateItem

CHECKS_KEY = pytest.StashKey[list[GateRecord]]()  # a test function's ppl_regression.check records
# set when a check failed the test with its verdict (pytest.fail without a traceback): a gate failure
CHECK_FAILED_KEY = pytest.StashKey[bool]()


def with_recorded_device_type(entry: EntrySpec, profile_device: str) -> EntrySpec:
    """Entries recorded before the fingerprint held ``device_type`` were measured on the profile's device."""
    fp = entry.fingerprint
    if fp is None or "device_type" in fp:
        return entry
    return dataclasses.replace(entry, fingerprint={**fp, "device_type": profile_device.split(":")[0]})


REPORT_NAME_WIDTH = 64


def report_model_name(source: Any) -> str:
    """The model column of every report, one rule for collected and fixture entries: the source's name (a GGUF's
    stem without its quant type, a folder's or hub id's last part). A baseline file's ``model.name`` is the test
    id's prefix (``smollm2[cpu-fp32]``), not the model's name in the tables."""
    return source.short_name(REPORT_NAME_WIDTH)


def target_of(item: GateItem) -> Target:
    """What the verdict needs to know about the test item."""
    return Target(
        nodeid=item.nodeid,
        name=item.name,
        file=str(item.spec.path),
        model=report_model_name(item.source),
        source=item.source.describe(),
        profile=item.profile.name,
        device=item.device,
        seqlen=item.profile.seqlen,
    )


def base_record(item: GateItem, status: Status) -> GateRecord:
    """The result record of a gate test before anything is measured."""
    return new_record(target_of(item), item.variant, status)


def measured_of(m: Any, reference: str | None) -> Measured:
    """What the verdict needs of a :class:`~pplgate.measure.Measurement` of an entry naming ``reference``."""
    r, c = m.result, m.comparison
    fp, kld = m.fingerprint, None
    if reference is not None and c is not None:
        ref = c.reference  # None for a stored reference: the file's identity (its content hash included)
        identity = (
            c.stored if ref is None else reference_identity(reference, ref.fingerprint["variant"], ref.result.dtype)
        )
        fp = {**fp, "reference": identity}
        res = c.result
        kld = KldMeasured(reference, res.mean_kld, res.top1_agreement, list(res.window_klds), list(res.window_top1))
    return Measured(
        ppl=r.ppl,
        window_nlls=list(r.window_nlls),
        n_windows=r.n_windows,
        n_windows_total=r.n_windows_total,
        fingerprint=fp,
        origin=m.origin,
        wall_time_s=r.wall_time_s,
        prepare_time_s=m.prepare_time_s,
        tokens_per_s=r.tokens_per_s,
        phases=m.phases,
        kld=kld,
        layers=c.layers if c is not None else None,
    )


def not_written_lines(records: list[GateRecord], rootdir: Path) -> list[str]:
    """The measured numbers of every update that was not written, as the file would have held them."""
    out = []
    for rec in records:
        if rec.status != Status.NOT_WRITTEN or rec.update is None:
            continue
        u = rec.update
        nlls = ", ".join(f"{x:.{NLL_DECIMALS}f}" for x in u.window_nlls)
        out.append(
            f"pplgate: measured, not written: {reports.relpath(rec.file or '', rootdir)} :: {u.profile}/{u.variant}: "
            f"ppl {u.ppl:.{PPL_DECIMALS}f} over {len(u.window_nlls)} windows, window NLLs [{nlls}]"
        )
    return out


def attach_record(item: pytest.Item, call: pytest.CallInfo[None], rep: pytest.TestReport) -> None:
    """Put the item's record(s) on its report: a gate item's (a skip or an error records its reason), or
    the records of the ``ppl_regression.check`` calls of a test function."""
    exc = call.excinfo.value if call.excinfo is not None else None
    if not isinstance(item, GateItem):
        checks = item.stash.get(CHECKS_KEY, None)
        if checks and rep.when == "call":
            failed = item.stash.get(CHECK_FAILED_KEY, False) and isinstance(exc, pytest.fail.Exception)
            rep.pplgate_gate_failure = failed  # type: ignore[attr-defined]
            rep.pplgate_checks = [rec.to_dict() for rec in checks]  # type: ignore[attr-defined]
        return
    if rep.when not in ("setup", "call"):
        return
    if rep.failed:
        rep.pplgate_gate_failure = isinstance(exc, GateFailure)  # type: ignore[attr-defined]
    rec = item.record if rep.when == "call" else None
    if rep.skipped:
        rec = rec or base_record(item, Status.SKIPPED)
        rec.mark_skipped(str(getattr(exc, "msg", None) or exc or ""))
    elif rep.failed and not isinstance(exc, GateFailure):
        rec = rec or base_record(item, Status.ERROR)
        rec.mark_error(f"{type(exc).__name__}: {exc}" if exc is not None else str(rep.longrepr))
    if rec is not None:
        rep.pplgate = rec.to_dict()  # type: ignore[attr-defined]  # plain data: travels from xdist workers
