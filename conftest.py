"""Repository-level pytest setup: load the pplgate plugin and find ../shared beside the checkout.

Installed users get the plugin through the ``pytest11`` entry point ``pplgate.plugin``; the same
name here means pytest registers it only once when both are present.
"""

import os
from pathlib import Path

pytest_plugins = ["pplgate.plugin"]

_shared = Path(os.environ.get("PPLGATE_SHARED") or Path(__file__).resolve().parent.parent / "shared")
_wikitext = _shared / "data" / "wikitext-2-raw-v1"
if "PPLGATE_WIKITEXT" not in os.environ and _wikitext.is_dir():
    os.environ["PPLGATE_WIKITEXT"] = str(_wikitext)
# the offline AWQ calibration corpus that baselines/*.yaml name as $PPLGATE_CALIBRATION
_calibration = _shared / "data" / "calibration" / "python-3.11-docs-prose.jsonl"
if "PPLGATE_CALIBRATION" not in os.environ and _calibration.is_file():
    os.environ["PPLGATE_CALIBRATION"] = str(_calibration)
