"""The type stubs (pompc/_pompc.pyi) match the extension's real signatures: mypy's stubtest
(pip install mypy; README's test set-up and CI install it)."""

import os
import pathlib
import subprocess
import sys

import pytest

import pompc


def test_stubs_match_the_extension():
    try:
        import mypy.stubtest  # noqa: F401
    except ImportError:
        pytest.fail("the stub check needs mypy: pip install mypy")
    package = pathlib.Path(pompc.__file__).resolve().parent
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(package.parent), os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, "-m", "mypy.stubtest", "pompc._pompc"],
                       capture_output=True, text=True, env=env, cwd=package.parent, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
