"""Classic MPPI with dynamics written as a WGSL string: a unicycle drives to a goal around a
round obstacle; the sampled rollouts of a few steps are plotted with matplotlib.

    python mppi_wgsl.py --out rollouts.png
"""

import argparse
import math

import numpy as np

import pompc

# The contract: dynamics, running_cost, terminal_cost over pompc's State and Control arrays;
# DT, param(i) (the array given to set_params) come from pompc.
UNICYCLE = """
fn dynamics(x: State, u: Control, t: u32) -> State {
    return State(x[0] + DT * u[0] * cos(x[2]), x[1] + DT * u[0] * sin(x[2]), x[2] + DT * u[1]);
}
fn running_cost(x: State, u: Control, t: u32) -> f32 {
    let dx = x[0] - param(0u);
    let dy = x[1] - param(1u);
    let ox = x[0] - param(2u);
    let oy = x[1] - param(3u);
    let inside = param(4u) - sqrt(ox * ox + oy * oy);
    return sqrt(dx * dx + dy * dy) + select(0.0, 1000.0, inside > 0.0);
}
fn terminal_cost(x: State) -> f32 {
    let dx = x[0] - param(0u);
    let dy = x[1] - param(1u);
    return 10.0 * sqrt(dx * dx + dy * dy);
}
"""


def simulate(x, u, dt):
    return np.array([x[0] + dt * u[0] * math.cos(x[2]), x[1] + dt * u[0] * math.sin(x[2]),
                     x[2] + dt * u[1]])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="mppi_rollouts.png")
    ap.add_argument("--steps", type=int, default=250)
    args = ap.parse_args()

    goal, obstacle = (2.0, 1.0), (1.0, 0.5, 0.3)
    dt = 0.02
    mppi = pompc.Mppi(UNICYCLE, state_dim=3, control_dim=2, horizon=100, samples=1024,
                      param_len=5, lambda_=1.0, gamma=0.015, sigma=[0.5, 1.0],
                      u_min=[-1.0, -2.0], u_max=[1.0, 2.0], dt=dt, keep_rollouts=64)
    mppi.set_params(np.array([*goal, *obstacle], np.float32))
    x = np.zeros(3)
    path, snapshots = [x.copy()], []
    for step in range(args.steps):
        u = mppi.step(x.astype(np.float32))
        if step % 60 == 0:
            snapshots.append(mppi.rollouts())
        x = simulate(x, u, dt)
        path.append(x.copy())
        if math.hypot(x[0] - goal[0], x[1] - goal[1]) < 0.05:
            break
    print(f"{step + 1} steps, final state {np.round(x, 3)}, last step {mppi.last_step}")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for states, weights in snapshots:
        w = weights / max(weights.max(), 1e-12)
        for s, wi in zip(states, w):
            ax.plot(s[:, 0], s[:, 1], color="tab:blue", alpha=0.1 + 0.6 * float(wi), lw=0.7)
    path = np.array(path)
    ax.plot(path[:, 0], path[:, 1], color="black", lw=2, label="executed")
    ax.add_patch(plt.Circle(obstacle[:2], obstacle[2], color="tab:red", alpha=0.5))
    ax.plot(*goal, "g*", ms=14, label="goal")
    ax.set_aspect("equal")
    ax.legend(loc="upper left")
    ax.set_title("pompc.Mppi: sampled rollouts (shade: weight)")
    fig.savefig(args.out, dpi=120, bbox_inches="tight")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
