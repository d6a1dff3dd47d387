"""Repository-level pytest setup: load the pplgate plugin.

Installed users get the plugin through the ``pytest11`` entry point ``pplgate.plugin``; the same
name here means pytest registers it only once when both are present.

The offline inputs (WikiText-2, the AWQ calibration corpus) are found by :mod:`pplgate.locate`, the
same lookup the CLI uses: option, environment variable, ``$PPLGATE_SHARED`` or ``../shared`` beside the
checkout, the hub. ``$PPLGATE_CALIBRATION`` is exported here from that lookup for the tests that read
the variable themselves (``tests/gpu``); baselines naming it resolve it through the same function anyway.
"""

import os

from pplgate.locate import CALIBRATION_ENV, find_calibration

pytest_plugins = ["pplgate.plugin"]

if not os.environ.get(CALIBRATION_ENV):
    _calibration = find_calibration().path
    if _calibration is not None:
        os.environ[CALIBRATION_ENV] = str(_calibration)
