"""Classic MPPI from Python: the built-in cart-pole WGSL swings up and stays up against an
independent numpy simulator of its documented dynamics; rollouts come back with the right
shapes; a WGSL dynamics string of your own works."""

import math

import numpy as np

import pompc

# pompc::planner::problems::CartPole's defaults, as documented there.
MC, MP, L, G, FMAX, DT = 1.0, 0.1, 0.5, 9.81, 10.0, 0.02


def simulate(x, u):
    """One semi-implicit Euler step of the cart-pole (theta 0 upright), in float64."""
    f = FMAX * float(np.clip(u, -1.0, 1.0))
    s, c = math.sin(x[2]), math.cos(x[2])
    x_acc = (f + MP * s * (L * x[3] ** 2 - G * c)) / (MC + MP * s * s)
    th_acc = (G * s - c * x_acc) / L
    v = x[1] + DT * x_acc
    w = x[3] + DT * th_acc
    return np.array([x[0] + DT * v, v, x[2] + DT * w, w])


def wrap(a):
    return (a + math.pi) % (2 * math.pi) - math.pi


def test_cartpole_swings_up_and_stays_up(gpu):
    p = pompc.builtin_problem("cartpole")
    mppi = pompc.Mppi(
        p["wgsl"], p["state_dim"], p["control_dim"], horizon=60, samples=256,
        param_len=p["param_len"], lambda_=1.0, sigma=0.5, dt=DT, seed=11, gpu=gpu,
    )
    mppi.set_params(np.zeros(1, np.float32))
    x = np.array([0.0, 0.0, math.pi, 0.0])  # hanging at rest
    reached, hold = None, 50
    for step in range(400):
        u = mppi.step(x.astype(np.float32))
        assert u.shape == (1,) and u.dtype == np.float32 and abs(u[0]) <= 1.0
        x = simulate(x, u[0])
        if reached is None and abs(wrap(x[2])) < 0.15 and abs(x[3]) < 1.0:
            reached = step
        if reached is not None:
            assert abs(wrap(x[2])) < 0.35, f"fell {step - reached} steps after swinging up"
            if step >= reached + hold:
                break
    assert reached is not None, "the cart-pole did not swing up in 400 steps (8 s)"
    assert step >= reached + hold
    assert abs(x[0]) < 1.5
    assert mppi.last_step["finite_samples"] == 256


def test_rollouts_and_controls_have_their_shapes(gpu):
    wgsl = """
fn dynamics(x: State, u: Control, t: u32) -> State {
    return State(x[0] + DT * u[0], x[1] + DT * u[1]);
}
fn running_cost(x: State, u: Control, t: u32) -> f32 {
    let dx = x[0] - param(0u);
    let dy = x[1] - param(1u);
    return dx * dx + dy * dy;
}
fn terminal_cost(x: State) -> f32 { return 0.0; }
"""
    mppi = pompc.Mppi(wgsl, 2, 2, horizon=20, samples=64, param_len=2, keep_rollouts=8,
                      sigma=[0.5, 0.3], u_min=-2.0, u_max=[2.0, 1.0], gpu=gpu)
    mppi.set_params(np.array([1.0, -1.0], np.float32))
    start = np.array([0.25, 0.5], np.float32)
    u = mppi.step(start)
    assert u.shape == (2,) and -2.0 <= u[0] <= 2.0 and -2.0 <= u[1] <= 1.0
    states, weights = mppi.rollouts()
    assert states.shape == (8, 21, 2) and weights.shape == (8,)
    np.testing.assert_array_equal(states[:, 0], np.broadcast_to(start, (8, 2)))
    assert (weights >= 0).all()
    assert mppi.controls().shape == (20, 2)
    mppi.set_controls(np.full((20, 2), 0.5, np.float32))
    np.testing.assert_array_equal(mppi.controls(), np.full((20, 2), 0.5, np.float32))
    mppi.reset()
    assert not mppi.controls().any()
    # Driving towards the goal: the first control points at it.
    for _ in range(5):
        u = mppi.step(start)
    assert u[0] > 0 and u[1] < 0
    assert mppi.calls == 6
