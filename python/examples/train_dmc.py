"""Train PO-MPC on a dm_control task (MuJoCo) through the bindings, in resumable chunks.

    python train_dmc.py --domain cartpole --task swingup --seed 0 --steps 100000 \
        --out runs/cartpole-swingup --time-limit 540

Needs dm_control (``pip install dm-control``). Each call continues the run saved in
``OUT/seed{S}.ckpt.safetensors`` (if any), trains until ``--steps`` or until
``--time-limit`` seconds have passed, saves a checkpoint every ``--ckpt-every`` steps and at
the end, and appends to ``OUT/seed{S}.csv`` one row per training episode and evaluation:
kind, step, return, wall seconds of this call, environment steps per second of this call.
A run whose budget is spent prints ``done``.
"""

import argparse
import csv
import os
import time

import pompc
from pompc.dmc import DMCEnv


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--domain", default="cartpole")
    ap.add_argument("--task", default="swingup")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=100_000, help="the run's total env steps")
    ap.add_argument("--method", default="po-mpc")
    ap.add_argument("--lam", type=float, default=1.0)
    ap.add_argument("--model", default="5", help="tiny, small or a TD-MPC2 size (5: TD-MPC2's)")
    ap.add_argument("--ckpt-every", type=int, default=5000)
    ap.add_argument("--eval-every", type=int, default=10_000)
    ap.add_argument("--eval-episodes", type=int, default=10)
    ap.add_argument("--time-limit", type=float, default=None, help="seconds for this call")
    ap.add_argument("--precision", default=None, help="planner precision: f32, f16, coop")
    ap.add_argument("--out", default="runs")
    args = ap.parse_args()

    t0 = time.perf_counter()
    deadline = t0 + args.time_limit if args.time_limit else None
    os.makedirs(args.out, exist_ok=True)
    ckpt = os.path.join(args.out, f"seed{args.seed}.ckpt.safetensors")
    log = os.path.join(args.out, f"seed{args.seed}.csv")

    def env(seed_offset: int) -> DMCEnv:
        return DMCEnv(args.domain, args.task, action_repeat=2, seed=args.seed + seed_offset)

    model = int(args.model) if args.model.isdigit() else args.model
    lam = args.lam if args.method == "po-mpc" else None
    config = dict(eval_every=args.eval_every, eval_episodes=args.eval_episodes)
    if args.precision:
        config["planner_precision"] = args.precision
    common = dict(method=args.method, lam=lam, model=model, seed=args.seed, steps=args.steps,
                  eval_env=env(1000), **config)
    if os.path.exists(ckpt):
        trainer = pompc.Trainer.resume(ckpt, env(0), **common)
        print(f"resumed {ckpt} at step {trainer.step}", flush=True)
    else:
        trainer = pompc.Trainer(env(0), **common)
    print(trainer, trainer.gpu, flush=True)
    step0 = trainer.step
    if step0 >= args.steps:
        print("done", flush=True)
        return

    new_file = not os.path.exists(log)
    with open(log, "a", newline="") as f:
        out = csv.writer(f)
        if new_file:
            out.writerow(["kind", "step", "return", "wall_s", "env_steps_per_s"])

        def on(event: dict) -> bool:
            now = time.perf_counter()
            if event["kind"] in ("episode", "eval"):
                rate = (event["step"] - step0) / max(now - t0, 1e-9)
                out.writerow([event["kind"], event["step"], f"{event['return']:.2f}",
                              f"{now - t0:.1f}", f"{rate:.2f}"])
                f.flush()
                print(f"{event['kind']} step {event['step']}: return {event['return']:.1f} "
                      f"({rate:.1f} env-steps/s)", flush=True)
            elif event["kind"] == "pretrained":
                print(f"pre-training: {event['updates']} updates in {event['seconds']:.1f} s",
                      flush=True)
            # Stop in time to write the checkpoint.
            return deadline is None or now < deadline

        while trainer.step < args.steps:
            before = trainer.step
            goal = min(args.steps, (before // args.ckpt_every + 1) * args.ckpt_every)
            trainer.run(goal - before, callback=on)
            trainer.save(ckpt)
            elapsed = time.perf_counter() - t0
            print(f"checkpoint at step {trainer.step} ({elapsed:.0f} s, "
                  f"{(trainer.step - step0) / elapsed:.1f} env-steps/s in this call)", flush=True)
            if deadline is not None and time.perf_counter() >= deadline:
                break
    if trainer.step >= args.steps:
        print("done", flush=True)


if __name__ == "__main__":
    main()
