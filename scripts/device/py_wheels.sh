#!/usr/bin/env bash
# Run HERE (network), not on the device: gathers what the H100 host (no network, no Rust,
# Python of unknown version 3.10-3.12) needs to train through the Python bindings on
# dm_control: the wheels of mujoco, dm-control and their run-time needs for cp310, cp311 and
# cp312 (manylinux x86_64), and pompc's own wheel (abi3: one file for every CPython >= 3.10).
# Everything goes to .gpu/wheels (ignored by git; .gpu also holds the Vulkan loaders of
# ../shared/gpu/prepare.sh, which run.sh unpacks on the device). Then call the device with
# carry [".gpu"] and: bash .gpu/run.sh bash scripts/device/py_dmc_train.sh SEEDS STEPS
#
# Trimmed to what `dm_control.suite.load` uses, so that the carried tree stays under the
# device's 64 MiB: dm-control without the needs of its viewer, locomotion and composer parts
# (scipy, labmaze, requests, tqdm, setuptools, pyparsing; installed with --no-deps), its
# locomotion and dog assets, MuJoCo's studio and Filament renderer (py_trim_wheel.py), and
# numpy (the host has PyTorch, which brings it; FULL_NUMPY=1 adds it). The last step installs
# the set offline into a scratch venv here and loads cartpole-swingup, as the device will.
# The sizes are printed at the end.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=.gpu/wheels
rm -rf "$out" && mkdir -p "$out"
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> "$(git rev-parse --git-common-dir)/info/exclude"
plat=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
# The suite's imports, pinned to a pair that still ships MuJoCo 3 wheels for cp310 (MuJoCo 4
# needs Python 3.11 and splits into several packages).
for py in 310 311 312; do
  pip download -q --only-binary=:all: --implementation cp --python-version "$py" "${plat[@]}" \
    --no-deps -d "$out" mujoco==3.17.0 dm-tree lxml wrapt ${FULL_NUMPY:+numpy}
done
# Pure-Python needs, one copy for all versions.
pip download -q --only-binary=:all: --no-deps -d "$out" dm-control==1.0.50 absl-py dm-env \
  etils glfw pyopengl protobuf typing-extensions attrs
for w in "$out"/mujoco-*.whl; do
  python3 scripts/device/py_trim_wheel.py "$w" mujoco/experimental/ mujoco/_render_filament \
    mujoco/include/
done
python3 scripts/device/py_trim_wheel.py "$out"/dm_control-*.whl dm_control/locomotion/soccer/ \
  dm_control/locomotion/walkers/assets dm_control/locomotion/arenas/assets \
  dm_control/suite/dog_assets/ dm_control/mujoco/testing/assets dm_control/blender/ \
  dm_control/suite/all_domains.png dm_control/mjcf/test_assets/ dm_control/third_party/kinova/
# pompc: maturin builds the abi3 extension (PyO3's abi3-py310) against this machine's Python.
maturin build --release -m python/Cargo.toml -o "$out" 2>&1 | tail -2
# What py_dmc_train.sh installs (pip picks each one's wheel for the Python at hand).
echo "dm-control mujoco dm-tree lxml wrapt absl-py dm-env etils glfw pyopengl protobuf \
typing-extensions attrs pompc ${FULL_NUMPY:+numpy}" > "$out/packages.txt"
# The same offline install as on the device: the device's python3 is a venv that holds numpy
# (PyTorch's), and py_dmc_train.sh installs into a --target folder on PYTHONPATH; here a
# scratch venv with numpy stands in for it, with this machine's Python.
venv=$(mktemp -d)
python3 -m venv "$venv"
"$venv/bin/pip" install -q numpy
"$venv/bin/python" -m pip install -q --no-index --find-links "$out" --no-deps --no-compile \
  --target "$venv/site" $(cat "$out/packages.txt")
cat > "$venv/smoke.py" <<'PY'
import numpy as np, pompc
from pompc.dmc import DMCEnv
e = DMCEnv("cartpole", "swingup")
o, _ = e.reset(seed=0)
o, r, te, tr, _ = e.step(np.zeros(1, np.float32))
print("offline install works: cartpole-swingup obs", o.shape, "reward", round(r, 4), "pompc", pompc.__version__)
PY
PYTHONPATH="$venv/site" MUJOCO_GL=disable "$venv/bin/python" scripts/device/py_dmc_run.py \
  "$venv/smoke.py"
rm -rf "$venv"
ls -l "$out" | awk 'NR > 1 { printf "%8.1f MiB  %s\n", $5 / 1048576, $9 }'
du -sh "$out" .gpu
