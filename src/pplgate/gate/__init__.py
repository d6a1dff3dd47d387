"""The gate's judgement and bookkeeping: baseline spec, rules, drift, verdict, store, reports.

Pure Python: nothing here imports torch or pytest, so reading and judging a baseline file is cheap.
"""
