"""Write the GPU tier's three original entries (fp16, rtn-w4g64, awq-w4g64) of a baseline file, without
references, KLD/top-1 and speed rules: the file both the old code (issue 13's e9d64ac) and this checkout
gate in the old-vs-new speed comparison. Usage: python original_entries.py SRC.yaml OUT.yaml"""

from __future__ import annotations

import sys

from ruamel.yaml import YAML

KEEP = ("fp16", "rtn-w4g64", "awq-w4g64")
NEW_RULES = ("kld", "top1", "speed")


def main(src: str, out: str) -> None:
    yaml = YAML()
    doc = yaml.load(open(src, encoding="utf-8"))
    doc["profiles"] = {"gpu": doc["profiles"]["gpu"]}
    variants = doc["profiles"]["gpu"]["variants"]
    for name in list(variants):
        if name not in KEEP:
            del variants[name]
    for entry in variants.values():
        entry.pop("reference", None)
        entry["tolerance"] = [r for r in entry["tolerance"] if r.get("type") not in NEW_RULES]
        if "reference" in entry.get("fingerprint", {}):
            raise SystemExit(
                f"{src}: recorded with a reference; give the file as committed (before --update-baselines)"
            )
    with open(out, "w", encoding="utf-8") as fh:
        yaml.dump(doc, fh)


if __name__ == "__main__":
    main(*sys.argv[1:3])
