"""Collection: a baseline YAML file is a :class:`BaselineFile`; each (profile, entry) is a :class:`GateItem`."""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from typing import Any, Protocol

import pytest

from pplgate.errors import BaselineError, PplgateError
from pplgate.gate import detect, reports
from pplgate.gate.record import GateRecord, Status
from pplgate.gate.spec import BaselineSpec, EntrySpec, ProfileSpec, parse_baseline
from pplgate.gate.store import read_text


class Gate(Protocol):
    """What collection and the items use of the session's gate (``session.GateSession`` implements it)."""

    measurer: Any
    collected_files: dict[str, Path]

    def is_baseline_file(self, path: Path) -> bool: ...

    def run_item(self, item: GateItem) -> None: ...


GATE_KEY = pytest.StashKey[Gate]()
CUDA_SKIP = (
    "gpu tier: no CUDA device available (torch.cuda.is_available() is False); "
    "run `pytest -m smoke` for the CPU tier or pass --pplgate-device to run this profile elsewhere"
)


class GateFailure(Exception):
    """The gate's verdict: a regression, protocol drift or a missing baseline (not a crash)."""

    def __init__(self, message: str, status: Status) -> None:
        super().__init__(message)
        self.status = status


def gate_of(config: pytest.Config) -> Gate:
    """The session's gate (a :class:`~pplgate.pytest_plugin.session.GateSession`)."""
    return config.stash[GATE_KEY]


def known_kinds() -> list[str]:
    """The variant kinds, for validating baseline files (names only: imports no kind, nor torch)."""
    from pplgate.models.registry import known_kinds as registered

    return registered()


def collect_file(file_path: Path, parent: pytest.Collector) -> BaselineFile | None:
    """Every ``*.yaml``/``*.yml`` (any case) under the baselines dir, sub-directories and symlinks included.

    A file reached twice (a symlink beside its target) is collected once, under the first path seen.
    """
    if file_path.suffix.lower() not in (".yaml", ".yml"):
        return None
    gate = gate_of(parent.config)
    if not gate.is_baseline_file(file_path):
        return None
    real = os.path.realpath(file_path)
    if gate.collected_files.setdefault(real, file_path) != file_path:
        return None
    return BaselineFile.from_parent(parent, path=file_path)


def fail_fast(variant: Any) -> None:
    """The kind's collection-time checks (``collection_check``: a ``user`` entry's module imports, an
    llm-compressor ``recipe_file`` reads): a typo fails the collection in seconds, before any measurement.
    Only the entry's own code is imported (nothing of the other entries, no model)."""
    check = getattr(variant, "collection_check", None)
    if check is not None:
        check()
    if getattr(variant, "recipe_path", None) is not None:
        variant.needs_calibration()  # llmc-recipe: reads and parses the recipe file (errors name its path)


class BaselineFile(pytest.File):
    """A ``baselines/<model>.yaml`` file; yields one :class:`GateItem` per profile and entry."""

    def collect(self):
        from pplgate.errors import VariantError
        from pplgate.models.registry import make_variant
        from pplgate.models.source import resolve_source

        spec = parse_baseline(self.path, known_kinds=known_kinds())
        if spec.model is None:
            return  # only ``tests:`` entries: their test functions measure them (the ppl_regression fixture)
        try:
            source = resolve_source(spec.resolve_path(spec.model.source), spec.model.gguf_file, spec.model.revision)
        except PplgateError as exc:
            raise BaselineError(self.path, "model.source", str(exc)) from exc
        tokenizer = spec.resolve_path(spec.model.tokenizer)
        if tokenizer and tokenizer.startswith("/") and not Path(tokenizer).exists():
            raise BaselineError(self.path, "model.tokenizer", f"tokenizer path {tokenizer} does not exist")
        for warning in detect.collection_warnings(spec, read_text(self.path)):  # a tolerance too loose or tight
            self.warn(pytest.PytestWarning(warning))
        names: dict[str, str] = {}
        for profile in spec.profiles.values():
            for entry in profile.variants.values():
                keypath = f"profiles.{profile.name}.variants.{entry.name}"
                try:
                    fail_fast(make_variant(entry.kind, entry.params))
                except VariantError as exc:
                    raise BaselineError(self.path, keypath, str(exc)) from exc
                name = f"{spec.model.name}[{profile.name}-{entry.name}]"
                if name in names:
                    raise BaselineError(
                        self.path,
                        keypath,
                        f"test id {name} is also the id of {names[name]}: rename the profile or the variant "
                        "so that '<profile>-<variant>' differs",
                        entry.line,
                    )
                names[name] = keypath
                yield GateItem.from_parent(
                    self, name=name, spec=spec, profile=profile, variant=entry, source=source, tokenizer=tokenizer
                )

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, PplgateError):
            return f"invalid baseline file: {excinfo.value}"
        return super().repr_failure(excinfo)


class GateItem(pytest.Item):
    """One gate test: measure an entry, check the protocol fingerprint and the tolerance rules."""

    def __init__(self, *, spec: BaselineSpec, profile: ProfileSpec, variant: EntrySpec, source, tokenizer, **kw):
        super().__init__(**kw)
        assert spec.model is not None
        self.model_name = spec.model.name
        self.spec, self.profile, self.variant = spec, profile, variant
        self.source, self.tokenizer_ref = source, tokenizer
        self.record: GateRecord | None = None
        self.add_marker("pplgate")
        self.add_marker(profile.marker)
        self.add_marker(pytest.mark.xdist_group(name=spec.model.name))

    @property
    def device(self) -> str:
        return self.config.getoption("--pplgate-device") or self.profile.device

    def setup(self) -> None:
        """Skip without CUDA for a cuda profile; without any copy of the dataset, skip outside CI.

        The dataset is looked up here, before any model loads. Not found: outside CI the entry skips
        with the reason; under CI (``$CI`` true or ``PPLGATE_REQUIRE_SHARED=1``) it fails in the call
        phase with the same reason. Other dataset errors (hash mismatch, corrupt file) fail there too.
        """
        if self.device.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                pytest.skip(CUDA_SKIP)
        from pplgate.errors import DatasetNotFound
        from pplgate.locate import inputs_required

        try:
            gate_of(self.config).measurer.text()
        except DatasetNotFound as exc:
            if not inputs_required():
                pytest.skip(str(exc))
        except PplgateError:
            pass  # reported as this entry's failure when runtest loads the dataset again

    def runtest(self) -> None:
        try:
            gate_of(self.config).run_item(self)
        finally:
            if self.record is not None:
                for key, value in reports.junit_properties(self.record):
                    self.user_properties.append((key, value))

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, GateFailure):
            return str(excinfo.value)
        if isinstance(excinfo.value, PplgateError):
            return f"pplgate: {self.name}: {type(excinfo.value).__name__}: {excinfo.value}"
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self) -> tuple[Any, int | None, str]:
        return self.path, self.variant.line, f"pplgate {self.name}"


def order_items(items: list[pytest.Item]) -> list[GateItem]:
    """Group gate items per (file, profile), relational references before their users; returns the gate order."""
    slots = [i for i, it in enumerate(items) if isinstance(it, GateItem)]
    groups: OrderedDict[tuple[str, str], list[GateItem]] = OrderedDict()
    for i in slots:
        it = items[i]
        assert isinstance(it, GateItem)
        groups.setdefault((str(it.spec.path), it.profile.name), []).append(it)
    ordered: list[GateItem] = []
    for group in groups.values():
        by_name = {it.variant.name: it for it in group}
        done: set[str] = set()

        def visit(it: GateItem, by_name=by_name, done=done) -> None:
            if it.variant.name in done:
                return
            done.add(it.variant.name)
            for ref in it.variant.refs:
                if ref in by_name:
                    visit(by_name[ref])
            ordered.append(it)

        for it in group:
            visit(it)
    for i, it in zip(slots, ordered, strict=True):
        items[i] = it
    return [it for it in items if isinstance(it, GateItem)]
