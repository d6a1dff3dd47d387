"""The record of one gate test: a :class:`Status` and one :class:`GateRecord` shape for every outcome.

A record is built by :func:`pplgate.gate.verdict.judge` (or, for a skip or an error, by
:func:`~pplgate.gate.verdict.new_record`), travels from a pytest-xdist worker to the controller as
:meth:`GateRecord.to_dict` and is read by :mod:`pplgate.gate.reports`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from enum import Enum
from typing import Any

from pplgate.gate.detect import DetectableShift
from pplgate.gate.drift import Change
from pplgate.gate.stats import PairedStats
from pplgate.gate.store import EntryUpdate


class Status(str, Enum):
    """What happened to one gate entry. The values are what records, JSON and JUnit carry."""

    PASS = "pass"
    FAIL = "fail"  # a regression (or a failing relational rule)
    IMPROVED = "improved"  # better than recorded, outside tolerance: still a failure
    DRIFT = "drift"  # the protocol fingerprint changed: numbers not compared
    MISSING = "missing"  # nothing recorded yet
    INCONSISTENT = "inconsistent"  # the recorded block contradicts itself (edited by hand): never a pass
    CREATED = "created"  # --update-baselines: queued as a new recording
    UPDATED = "updated"  # --update-baselines: queued as a re-recording
    NOT_WRITTEN = "not_written"  # queued, but the session did not write it
    SKIPPED = "skipped"
    ERROR = "error"  # the measurement raised (not a verdict)

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    @property
    def failing(self) -> bool:
        """A status that fails the gate."""
        return self in FAILING

    @property
    def queued(self) -> bool:
        """A status whose record carries an update to write."""
        return self in (Status.CREATED, Status.UPDATED)


FAILING = (
    Status.FAIL,
    Status.IMPROVED,
    Status.DRIFT,
    Status.MISSING,
    Status.INCONSISTENT,
    Status.ERROR,
    Status.NOT_WRITTEN,
)
MOVED = (Status.FAIL, Status.IMPROVED, Status.DRIFT)  # the statuses whose message says where the model moved


@dataclass(kw_only=True)
class GateRecord:
    """The result of one gate test, for the reports (one shape for every status).

    Fields left ``None`` are not serialised, except ``partial`` once the entry was measured (``None``:
    the run scored the profile's own windows). ``message`` (the failure text pytest prints) stays out
    of :meth:`to_dict` and out of equality: the JSON report carries the structured fields instead.
    """

    nodeid: str
    file: str | None = None
    model: str | None = None
    profile: str | None = None
    variant: str | None = None  # the entry's name
    kind: str | None = None
    device: str | None = None
    status: Status
    tolerance: str | None = None
    # the measurement
    ppl: float | None = None
    window_nlls: list[float] | None = None
    n_windows: int | None = None
    n_windows_total: int | None = None
    partial: bool | None = None  # True: scored only the first K windows (--pplgate-max-windows)
    origin: str | None = None
    wall_time_s: float | None = None
    prepare_time_s: float | None = None
    tokens_per_s: float | None = None  # the evaluation's speed (speed rules compare it within a session)
    phases: dict[str, float] | None = None  # seconds: load_s, prepare_s, tokenize_s, evaluate_s
    # the comparison with the recorded entry (its first K windows in a partial run)
    baseline: float | None = None
    delta: float | None = None
    rel_delta: float | None = None
    baseline_window_nlls: list[float] | None = None
    baseline_own_ppl: float | None = None  # exp(mean of the recorded window NLLs)
    hand_edited: bool | None = None  # the recorded ppl disagrees with its own window NLLs
    inconsistent: list[str] | None = None  # how the recorded block contradicts itself (recorded_problems)
    drift: list[Change] | None = None
    rules: list[dict[str, Any]] | None = None  # RuleResult.to_dict() of each rule checked
    paired: PairedStats | None = None
    detectable: DetectableShift | None = None  # the smallest PPL/KLD shift its windows resolve (gate.detect)
    kld: dict[str, Any] | None = None  # with a reference: pplgate.gate.kld.record_block (plain data)
    layers: dict[str, Any] | None = None  # this run's per-module profile, as recorded (gate.layers.compact)
    moved: list[str] | None = None  # where it moved vs the record (gate.layers.where_lines); kept when MOVED
    baseline_layers: dict[str, Any] | None = None  # the recorded profile (compact); kept when MOVED (the plot)
    rerun: str | None = None  # the command that re-records the entry
    update: EntryUpdate | None = None  # queued (created/updated/not_written)
    skip_reason: str | None = None
    error: str | None = None
    queued_as: Status | None = None  # created/updated, for a not_written record
    not_written: str | None = None  # why a queued update was not written
    message: str | None = field(default=None, compare=False)

    # ---- state changes after the verdict
    def mark_skipped(self, reason: str) -> None:
        self.status, self.skip_reason = Status.SKIPPED, reason

    def mark_error(self, text: str) -> None:
        self.status, self.error = Status.ERROR, text

    def mark_not_written(self, reason: str) -> None:
        self.queued_as, self.status, self.not_written = self.status, Status.NOT_WRITTEN, reason

    # ---- transport (xdist worker -> controller) and JSON
    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        measured = self.ppl is not None
        for f in fields(self):
            if f.name == "message":
                continue
            value = getattr(self, f.name)
            if value is None and not (measured and f.name == "partial"):
                continue
            if f.name in ("moved", "baseline_layers") and self.status not in MOVED:
                continue
            if isinstance(value, Status):
                value = value.value
            elif f.name == "drift":
                value = [[k, old, new] for k, old, new in value]
            elif isinstance(value, (PairedStats, EntryUpdate, DetectableShift)):
                value = value.to_dict()
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> GateRecord:
        names = {f.name for f in fields(cls)} - {"message"}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown gate record field(s): {', '.join(sorted(unknown))}")
        kw = dict(d)
        kw["status"] = Status(kw["status"])
        if kw.get("queued_as") is not None:
            kw["queued_as"] = Status(kw["queued_as"])
        if kw.get("drift") is not None:
            kw["drift"] = [tuple(c) for c in kw["drift"]]
        if kw.get("paired") is not None:
            kw["paired"] = PairedStats.from_dict(kw["paired"])
        if kw.get("detectable") is not None:
            kw["detectable"] = DetectableShift.from_dict(kw["detectable"])
        if kw.get("update") is not None:
            kw["update"] = EntryUpdate.from_dict(kw["update"])
        return cls(**kw)

    def __getitem__(self, key: str) -> Any:
        """A field by its JSON key, as :meth:`to_dict` has it (KeyError when not set)."""
        return self.to_dict()[key]
