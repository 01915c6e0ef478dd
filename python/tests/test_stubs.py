"""The type stubs (pompc/_pompc.pyi) match the extension's real signatures: mypy's stubtest
(pip install mypy; README's test set-up and CI install it)."""

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

import pompc


def test_stubs_match_the_extension(tmp_path):
    try:
        import mypy.stubtest  # noqa: F401
    except ImportError:
        pytest.fail("the stub check needs mypy: pip install mypy")
    # A copy of the package alone on the path: where it is installed (site-packages) mypy would
    # take every module beside it for the user's own, and refuse those that shadow its library.
    package = pathlib.Path(pompc.__file__).resolve().parent
    shutil.copytree(package, tmp_path / "pompc", ignore=shutil.ignore_patterns("__pycache__"))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, "-m", "mypy.stubtest", "pompc._pompc"],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
