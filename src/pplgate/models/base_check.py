"""A quantization-cache hit checked against its base model (issue #24): never a measurement of another model.

The cache key names the base by content for local sources (directory, file, GGUF) but by id and revision for a
hub source (an unpinned ``main`` that moved keeps its key), and an entry's files can be rewritten consistently.
So a kind that builds an entry (awq, gptq, llmc-recipe, user) records in its manifest, from the float model it
quantized, :func:`base_record`: the config (architecture, hidden size, layer count, vocabulary), the sha256 of
every tensor's name and shape, and the digests (:func:`pplgate.models.coverage.digest`) of the parameters the
kind left untouched (input embeddings, the final norm, lm_head where it is not quantized: those equal after the
build). A hit is checked by :func:`hit_problem`, the cheapest sound way:

* always: the loaded entry's config and the base's config (read without weights, cached by the Measurer) equal
  the recorded one, and every untouched parameter of the loaded entry has the recorded shape and digest;
* when the session already holds the float model (no extra load): its tensor shapes and untouched parameters
  equal the recorded ones, so a hub base that changed under the same key is caught.

A problem is a :class:`~pplgate.errors.CacheWarning` and a rebuild (the kind's business). An entry without a
record (built before) gets the config check only.
"""

from __future__ import annotations

import hashlib
import math
import re
import warnings
from typing import Any

import torch

from pplgate.errors import CacheWarning
from pplgate.models.coverage import digest
from pplgate.models.layers import architecture

CONFIG_KEYS = ("hidden_size", "num_hidden_layers", "vocab_size")
_LAYER = re.compile(r"\.\d+(\.|$)")


def tensor_digest(t: torch.Tensor) -> list[Any]:
    """:func:`~pplgate.models.coverage.digest` of ``t`` rounded to float16: a loader's dtype (AutoAWQ loads float16,
    llm-compressor calibrates in another dtype than it measures) rounds the same values alike."""
    return list(digest(t.detach().to(torch.float16)))


def config_summary(config: Any) -> dict[str, Any]:
    cfg = getattr(config, "text_config", None) or config
    return {"architecture": architecture(config), **{k: getattr(cfg, k, None) for k in CONFIG_KEYS}}


def shapes_sha256(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict(keep_vars=True).items()):
        h.update(f"{name}:{tuple(t.shape)}\n".encode())
    return h.hexdigest()


def untouched_candidates(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Input embeddings, lm_head (a plain float Linear) and the norms outside the decoder layers, by name."""
    names = {id(p): n for n, p in model.named_parameters()}
    out: dict[str, torch.Tensor] = {}
    emb = model.get_input_embeddings()
    if emb is not None and id(emb.weight) in names:
        out[names[id(emb.weight)]] = emb.weight
    head = model.get_output_embeddings()
    weight = getattr(head, "weight", None)
    if type(head) is torch.nn.Linear and weight is not None and weight.is_floating_point() and id(weight) in names:
        out[names[id(weight)]] = weight
    for mname, mod in model.named_modules():
        last = mname.rsplit(".", 1)[-1].lower()
        if "norm" in last and not _LAYER.search(mname):
            for _, p in mod.named_parameters(recurse=False):
                if id(p) in names:
                    out[names[id(p)]] = p
    return out


def base_record(base: torch.nn.Module) -> dict[str, Any]:
    """What a build records of the float model before quantizing it (see the module doc)."""
    return {
        "config": config_summary(base.config),
        "shapes_sha256": shapes_sha256(base),
        "untouched": {n: tensor_digest(t) for n, t in untouched_candidates(base).items()},
    }


def _same(a: Any, b: Any) -> bool:
    return a[2] == b[2] and all(
        math.isclose(x, y, rel_tol=1e-6, abs_tol=1e-9) for x, y in zip(a[:2], b[:2], strict=True)
    )


def finish_record(record: dict[str, Any], built: torch.nn.Module) -> dict[str, Any]:
    """``record`` keeping the untouched parameters that the built model still holds unchanged."""
    now = untouched_candidates(built)
    kept = {n: d for n, d in record["untouched"].items() if n in now and _same(tensor_digest(now[n]), d)}
    return {**record, "untouched": kept}


def hit_problem(cached: torch.nn.Module, record: Any, base_config: Any, held: torch.nn.Module | None) -> str | None:
    """Why the loaded entry ``cached`` is not the quantized ``base`` (None: it is); see the module doc."""
    want = config_summary(base_config)
    got = config_summary(cached.config)
    if got != want:
        diff = {k: (got[k], want[k]) for k in want if got[k] != want[k]}
        return f"its config differs from the base model's: {diff} (entry, base)"
    if not isinstance(record, dict):
        return None
    if record.get("config") != want:
        return f"the base model's config changed since the entry was built: {record.get('config')} -> {want}"
    now = untouched_candidates(cached)
    for name, d in record.get("untouched", {}).items():
        if name not in now:
            return f"the entry has no {name}"
        if not _same(tensor_digest(now[name]), d):
            return f"the entry's {name} is not the base model's"
    if held is not None:
        if shapes_sha256(held) != record.get("shapes_sha256"):
            return "the base model's tensor shapes differ from those the entry was built from"
        base = untouched_candidates(held)
        for name, d in record.get("untouched", {}).items():
            if name not in base or not _same(tensor_digest(base[name]), d):
                return f"the base model's {name} differs from the one the entry was built from"
    return None


def rebuild_on_mismatch(cache: Any, entry: Any, problem: str | None) -> bool:
    """Whether ``entry`` must be rebuilt: with a problem, one :class:`CacheWarning` and the entry discarded."""
    if problem is None:
        return False
    warnings.warn(
        f"pplgate quantization cache entry {entry.path} does not match its base model ({problem}); rebuilding it",
        CacheWarning,
        stacklevel=3,
    )
    cache.discard(entry.key)
    return True
