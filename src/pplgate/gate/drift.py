"""Protocol fingerprints: which recorded facts of the measurement changed (drift), and how to say so.

A fingerprint is the set of facts that make two perplexities comparable (dataset, tokenizer, window
layout, dtype, the variant's own parameters). When any of them differs from the recorded one the
numbers are not compared at all: the gate reports *drift* instead of a regression.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

# Fields of the protocol fingerprint, in the order they are written and compared.
FINGERPRINT_FIELDS = (
    "dataset_sha256",
    "n_tokens",
    "n_windows",
    "n_windows_total",
    "bos_added",
    "tokenizer_name",
    "tokenizer_sha256",
    "seqlen",
    "dtype",
    "device_type",
    "reference",  # an entry with a reference: that entry's name, variant and dtype (pplgate.gate.kld)
    "variant",
    "coverage",  # what the variant quantized (counts in parameters): compared once a record holds it
)
# Fields added after baselines were recorded: a record without one is not drift (a re-record adds it).
OPTIONAL_FIELDS = ("coverage",)

ABSENT = "ABSENT"  # plain string: drift records travel between xdist workers and into JSON
_MISSING = object()

Change = tuple[str, Any, Any]  # (field path, recorded value, current value)


def compare_fingerprints(
    recorded: Mapping[str, Any] | None, current: Mapping[str, Any], ignore: Sequence[str] = ()
) -> list[Change]:
    """Fields whose value changed, as ``(field, old, new)``; a missing recorded field counts too.

    Nested mappings (the variant's fingerprint) are compared key by key, so a change reads as
    ``variant.calibration.n_samples: 16 -> 32`` rather than as two whole dicts; a key present on
    one side only shows the other side as the string ``ABSENT``.
    """
    if recorded is None:
        return []
    out: list[Change] = []
    for key in FINGERPRINT_FIELDS:
        if key in ignore or (key in OPTIONAL_FIELDS and key not in recorded):
            continue
        _diff(key, recorded.get(key, _MISSING), current.get(key, _MISSING), out)
    return out


def _diff(path: str, old: Any, new: Any, out: list[Change]) -> None:
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        for k in [*old, *(k for k in new if k not in old)]:
            _diff(f"{path}.{k}", old.get(k, _MISSING), new.get(k, _MISSING), out)
    elif old is _MISSING and new is _MISSING:
        return
    elif old is _MISSING or new is _MISSING or old != new:
        out.append((path, ABSENT if old is _MISSING else old, ABSENT if new is _MISSING else new))


def describe_drift(changes: Sequence[Change]) -> str:
    """The changed field names, for a one-line summary (the values go on lines of their own)."""
    return ", ".join(k for k, _, _ in changes)


def drift_lines(changes: Sequence[Change], indent: str = "    ") -> str:
    """One ``field: old -> new`` line per change (values as ``repr``, ``ABSENT`` bare)."""
    return "\n".join(
        f"{indent}{k}: {old if old == ABSENT else repr(old)} -> {new if new == ABSENT else repr(new)}"
        for k, old, new in changes
    )
