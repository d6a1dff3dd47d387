"""What is measured: where a model comes from and how it becomes the model that is scored.

* :mod:`.source` — :class:`~.source.ModelSource`, loading models and tokenizers, the device/dtype policy;
* :mod:`.variant` — the :class:`~.variant.Variant` interface, :class:`~.variant.ModelContext`,
  :class:`~.variant.PreparedModel` (imports no kind);
* :mod:`.registry` — kind name -> class, imported on demand; third-party kinds by entry point;
* one module per kind: :mod:`.floating` (fp16/bf16/fp32), :mod:`.rtn`, :mod:`.awq` (awq, awq-checkpoint);
* what the kinds share: :mod:`.layers` (config, decoder layers, group sizes), :mod:`.calibration`,
  :mod:`.quant_cache` (on-disk cache of quantized models), :mod:`.hashing` (content identity),
  :mod:`.compat` (every patch of a third-party library, one module per library: AutoAWQ, llm-compressor,
  torch's fx registry; each refuses a library version it is not written for).

This package's ``__init__`` imports nothing, so ``pplgate.models.registry`` stays free of torch.
"""
