"""Runs a Python script (python/examples/train_dmc.py) on the device, where scipy is not
carried: dm_control.suite's __init__ imports every domain, and quadruped imports
scipy.ndimage at import time although only its terrain uses it. Without scipy, a stand-in
module lets the suite import and raises ImportError on any use, so a task that does need it
fails loudly instead of computing anything wrong.

    python py_dmc_run.py SCRIPT [ARGS ...]
"""

import importlib.util
import runpy
import sys
import types


class _Missing(types.ModuleType):
    def __getattr__(self, name: str):
        if name.startswith("__"):  # the import system's own probes (__path__, __spec__)
            raise AttributeError(name)
        raise ImportError(
            f"{self.__name__}.{name}: scipy is not installed on this host (not carried to the "
            "device; only dm_control's quadruped terrain needs it)"
        )


if importlib.util.find_spec("scipy") is None:
    scipy = _Missing("scipy")
    scipy.ndimage = _Missing("scipy.ndimage")
    sys.modules["scipy"] = scipy
    sys.modules["scipy.ndimage"] = scipy.ndimage

script = sys.argv[1]
sys.argv = sys.argv[1:]
runpy.run_path(script, run_name="__main__")
