"""The canonical number on a loaded model: the text (:mod:`.dataset`), its tokens (:mod:`.tokens`), the
windows and loss math (:mod:`.windows`), the scoring loop (:mod:`.engine`), the result (:mod:`.result`) and
progress lines (:mod:`.progress`); a model against a reference in one pass — KL divergence, top-1 agreement,
Δp — (:mod:`.compare`: the API, :mod:`.divergence`: the scoring loop, :mod:`.kld_stats`: the percentile sketch,
:mod:`.compare_result`).

Layer rule: this package uses torch and transformers' tokenizers, never YAML or pytest, and imports neither
:mod:`pplgate.models`, :mod:`pplgate.gate` nor the pytest plugin (it is what those build on).
"""

# the canonical window length, here so that torch-free code (the plugin at collection) can name it
DEFAULT_SEQLEN = 2048
