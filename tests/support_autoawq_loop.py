"""AutoAWQ's own ``evaluate_perplexity`` loop, run on local data: the fidelity and speed reference of the
tests (tests/protocol/test_autoawq_loop.py, tests/gpu/test_fidelity.py) and of bench/bench_gpu.py; the
package never runs it.

``awq.evaluation`` imports ``lm_eval`` and ``evaluate`` at import time although
``evaluate_perplexity`` uses neither; where they are missing, empty placeholder modules are
registered only for the duration of that import. The function's ``load_dataset`` global is
pointed at the rows pplgate loaded (the hub is unreachable offline). The loop itself is
AutoAWQ's installed code, unchanged, and only the version pplgate's AutoAWQ patches are written for
(:func:`pplgate.models.compat.autoawq.require_autoawq`). :func:`transcribed_evaluate_perplexity` is an exact
transcription of it (autoawq 0.2.9) for environments where AutoAWQ is not installed.
"""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn as nn

from pplgate.models.compat.autoawq import require_autoawq

_IMPORT_ONLY_DEPS = ("lm_eval", "lm_eval.tasks", "evaluate")


@contextmanager
def _placeholder_modules(names: Sequence[str]):
    added = []
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError:
            mod = types.ModuleType(name)
            # attributes eval_utils imports by name; calling them is an error, not a silent no-op
            for attr in ("evaluator", "initialize_tasks", "load"):
                setattr(mod, attr, _unavailable(f"{name}.{attr}"))
            sys.modules[name] = mod
            added.append(name)
    try:
        yield added
    finally:
        for name in added:
            sys.modules.pop(name, None)


def _unavailable(what: str) -> Callable[..., Any]:
    def fail(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"{what} is a placeholder: the real package is not installed")

    return fail


def installed_evaluate_perplexity(rows: list[str]) -> Callable[[Any, Any], float]:
    """Return AutoAWQ's installed ``evaluate_perplexity(model, tokenizer)`` reading ``rows``."""
    require_autoawq()
    with _placeholder_modules(_IMPORT_ONLY_DEPS):
        eval_utils = importlib.import_module("awq.evaluation.eval_utils")

    def local_load_dataset(*args: Any, **kwargs: Any) -> dict[str, list[str]]:
        if args[:2] != ("wikitext", "wikitext-2-raw-v1") or kwargs.get("split") != "test":
            raise RuntimeError(f"unexpected dataset request {args} {kwargs}")
        return {"text": rows}

    def run(model: Any, tokenizer: Any) -> float:
        saved = eval_utils.load_dataset
        eval_utils.load_dataset = local_load_dataset
        try:
            return float(eval_utils.evaluate_perplexity(model, tokenizer))
        finally:
            eval_utils.load_dataset = saved

    return run


def transcribed_evaluate_perplexity(model: Any, tokenizer: Any, rows: list[str], seqlen: int = 2048) -> float:
    """AutoAWQ 0.2.9 ``evaluate_perplexity``, transcribed (progress bar dropped)."""
    data = tokenizer("\n\n".join(rows), return_tensors="pt").input_ids.to(model.device)
    model = model.eval()
    n_samples = data.numel() // seqlen
    nlls = []
    for i in range(n_samples):
        batch = data[:, i * seqlen : (i + 1) * seqlen].to(model.device)
        with torch.no_grad():
            logits = model(batch).logits
        shift_logits = logits[:, :-1, :].contiguous().float()
        shift_labels = data[:, i * seqlen : (i + 1) * seqlen][:, 1:]
        loss = nn.CrossEntropyLoss()(shift_logits.view(-1, shift_logits.size(-1)), shift_labels.view(-1))
        nlls.append(loss.float() * seqlen)
    return torch.exp(torch.stack(nlls).sum() / (n_samples * seqlen)).item()


def autoawq_perplexity(model: Any, tokenizer: Any, rows: list[str]) -> tuple[float, str]:
    """AutoAWQ's loop on ``rows``: ``(ppl, how)`` where how is ``installed`` or ``transcribed``."""
    try:
        run = installed_evaluate_perplexity(rows)
    except ImportError:
        return transcribed_evaluate_perplexity(model, tokenizer, rows), "transcribed"
    return run(model, tokenizer), "installed"
