"""Plan with a converted TD-MPC2 checkpoint from numpy.

Convert the checkpoint first (scripts/export_tdmpc2.py in the repository, see
scripts/README.md), then:

    python plan_tdmpc2.py dog-run-5M.safetensors --batch 8 --steps 5

Without a file, ``--init 5 24 6`` plans with a freshly initialized 5M model for 24
observations and 6 actions (what the converted file would hold, minus the training).
"""

import argparse
import time

import numpy as np

import pompc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("weights", nargs="?", help="a pompc safetensors file (converted checkpoint)")
    ap.add_argument("--init", nargs=3, type=int, metavar=("SIZE", "OBS", "ACT"))
    ap.add_argument("--batch", type=int, default=8, help="environments planned at once")
    ap.add_argument("--steps", type=int, default=5, help="plan calls")
    ap.add_argument("--backend", default=None, help="vulkan, metal, dx12 or gl")
    args = ap.parse_args()

    gpu = pompc.Gpu(backend=args.backend)
    print(gpu)
    if args.weights:
        model = pompc.WorldModel.load(gpu, args.weights)
    elif args.init:
        size, obs_dim, act_dim = args.init
        model = pompc.WorldModel.init(gpu, size, obs_dim, act_dim, seed=0)
    else:
        ap.error("give a weights file or --init SIZE OBS ACT")
    print(model)

    # TD-MPC2's planner settings (horizon 3, 512 samples, 64 elites, 6 iterations), no
    # exploration noise.
    planner = pompc.Planner(model, plan_mode="eval")
    rng = np.random.default_rng(0)
    first = np.ones(args.batch, dtype=bool)
    for step in range(args.steps):
        obs = rng.normal(size=(args.batch, model.obs_dim)).astype(np.float32)
        t0 = time.perf_counter()
        plan = planner.plan(obs, first)
        dt = time.perf_counter() - t0
        first[:] = False  # later calls warm-start from the previous plan
        print(
            f"step {step}: {dt * 1e3:.1f} ms, action[0] = {np.round(plan.action[0], 3)}, "
            f"value[0] = {plan.value[0]:.3f}, planned mean {plan.mean.shape}"
        )


if __name__ == "__main__":
    main()
