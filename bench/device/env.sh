# Environment for pplgate runs on this workplace's device machine (sourced by stage1/stage2).
D=/root/pplgate
export PYTHONPATH=$D/site:$PWD/src${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
export PPLGATE_WIKITEXT=$D/data/test-00000-of-00001.parquet
export PPLGATE_CALIBRATION=$D/data/python-3.11-docs-prose.jsonl
export PPLGATE_SMOLLM2_GGUF=$D/SmolLM2-135M-Instruct.Q4_1.gguf
export PPLGATE_SHARED_TOKENIZERS=$D/tokenizers
export PPLGATE_CACHE_DIR=$D/quant-cache
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# The image's site-packages are read-only and ship without bytecode: every process compiled ~5,000
# modules from source (~10 s of each gate run on the H100, seen in a cProfile of the warm gate).
# A writable prefix lets the first run write the bytecode and every later one read it.
unset PYTHONDONTWRITEBYTECODE  # the image sets it: nothing was ever written
export PYTHONPYCACHEPREFIX=$D/pycache
