"""Train PO-MPC on a dm_control task (MuJoCo) through the bindings, several seeds as one
population, in resumable chunks.

    python train_dmc.py --domain cartpole --task swingup --seeds 0,1,2 --steps 100000 \
        --out runs/cartpole-swingup --time-limit 540

Needs dm_control (``pip install dm-control``). The seeds train as one ``pompc.Population``:
their plan steps and updates run in the same dispatches, and each seed's results are those
its own ``Trainer`` would give. Each call continues the population saved in ``OUT/ckpt``
(if any), trains until ``--steps`` or until ``--time-limit`` seconds have passed, saves a
checkpoint every ``--ckpt-every`` steps and at the end, and appends to
``OUT/dmc-DOMAIN-TASK-METHOD-sSEED.csv`` (METHOD as ``pompc train`` names it, ``po-mpc-l1``)
one row per training episode and evaluation: kind (``train`` or ``eval``), step, return, wall
seconds of this call, environment steps per second of this call (all seeds together). These
are the names and columns ``pompc plot`` reads, so ``pompc plot --summary --out curve.svg
OUT/*.csv`` pools the seeds, and ``--reference TD-MPC2=cartpole-swingup.csv`` draws TD-MPC2's
published results for the task (its repository's ``results/cartpole-swingup.csv``) beside
them. A run whose budget is spent prints ``done``.
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
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated seeds, one agent each")
    ap.add_argument("--steps", type=int, default=100_000, help="each seed's total env steps")
    ap.add_argument("--method", default="po-mpc")
    ap.add_argument("--lam", type=float, default=1.0)
    ap.add_argument("--model", default="small", help="tiny, small or a TD-MPC2 size (5: TD-MPC2's)")
    ap.add_argument("--ckpt-every", type=int, default=5000)
    ap.add_argument("--eval-every", type=int, default=10_000)
    ap.add_argument("--eval-episodes", type=int, default=10)
    ap.add_argument("--time-limit", type=float, default=None, help="seconds for this call")
    ap.add_argument("--precision", default=None, help="planner precision: f32, f16, coop")
    ap.add_argument("--quick", action="store_true",
                    help="Trainer's quick setting (tiny model, cheap planner) for CPU adapters")
    ap.add_argument("--out", default="runs")
    args = ap.parse_args()

    t0 = time.perf_counter()
    deadline = t0 + args.time_limit if args.time_limit else None
    seeds = [int(s) for s in args.seeds.split(",")]
    os.makedirs(args.out, exist_ok=True)
    ckpt = os.path.join(args.out, "ckpt")

    def env() -> DMCEnv:
        # The trainer reseeds every episode's reset from the agent's seed.
        return DMCEnv(args.domain, args.task, action_repeat=2)

    model = int(args.model) if args.model.isdigit() else args.model
    config = dict(eval_every=args.eval_every, eval_episodes=args.eval_episodes)
    if args.precision:
        config["planner_precision"] = args.precision
    common = dict(methods=[args.method], lams=[args.lam] if args.method == "po-mpc" else None,
                  seeds=seeds, model=model, steps=args.steps, quick=args.quick, **config)
    if os.path.isdir(ckpt):
        pop = pompc.Population.resume(ckpt, env, **common)
        print(f"resumed {ckpt} at steps {pop.steps}", flush=True)
    else:
        pop = pompc.Population(env, **common)
    print(f"{len(pop)} agents on {pop.gpu}; plan steps shared: {pop.shares_plan_steps or 'yes'}; "
          f"updates shared: {pop.shares_updates or 'yes'}", flush=True)
    step0 = sum(pop.steps)
    if min(pop.steps) >= args.steps:
        print("done", flush=True)
        return

    files, logs = [], []
    method = f"{args.method}-l{args.lam:g}" if args.method == "po-mpc" else args.method
    for s in seeds:
        path = os.path.join(args.out, f"dmc-{args.domain}-{args.task}-{method}-s{s}.csv")
        new_file = not os.path.exists(path)
        f = open(path, "a", newline="")
        files.append(f)
        logs.append(csv.writer(f))
        if new_file:
            logs[-1].writerow(["kind", "step", "return", "wall_s", "env_steps_per_s"])

    def on(agent: int, event: dict) -> bool:
        now = time.perf_counter()
        if event["kind"] in ("episode", "eval"):
            # The agents step in lock-step: all of them are at this step.
            rate = (len(seeds) * event["step"] - step0) / max(now - t0, 1e-9)
            kind = "train" if event["kind"] == "episode" else "eval"
            logs[agent].writerow([kind, event["step"], f"{event['return']:.2f}",
                                  f"{now - t0:.1f}", f"{rate:.2f}"])
            files[agent].flush()
            if event["kind"] == "eval" or agent == 0:
                print(f"seed {seeds[agent]} {event['kind']} step {event['step']}: return "
                      f"{event['return']:.1f}", flush=True)
        elif event["kind"] == "pretrained":
            print(f"seed {seeds[agent]} pre-training: {event['updates']} updates in "
                  f"{event['seconds']:.1f} s", flush=True)
        # Stop in time to write the checkpoint.
        return deadline is None or now < deadline

    try:
        while min(pop.steps) < args.steps:
            before = min(pop.steps)
            goal = min(args.steps, (before // args.ckpt_every + 1) * args.ckpt_every)
            pop.run(goal - before, callback=on)
            pop.save(ckpt)
            elapsed = time.perf_counter() - t0
            print(f"checkpoint at steps {pop.steps} ({elapsed:.0f} s, "
                  f"{(sum(pop.steps) - step0) / elapsed:.1f} env-steps/s in this call)", flush=True)
            if deadline is not None and time.perf_counter() >= deadline:
                break
    finally:
        for f in files:
            f.close()
    if min(pop.steps) >= args.steps:
        print("done", flush=True)


if __name__ == "__main__":
    main()
