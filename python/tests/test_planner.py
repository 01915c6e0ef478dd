"""The Python planner against the Rust planner (examples/plan_reference.rs) for the same
weights, observations and seeds; the shapes and options of Plan; parents kept alive."""

import gc
import subprocess

import numpy as np
import pytest

import pompc

SETTINGS = dict(horizon=3, num_samples=40, num_elites=6, num_pi_trajs=5, iterations=3)


def reference_plans(exe, weights, obs, first, settings, out_dir):
    calls, batch, _ = obs.shape
    obs_path, first_path, out_path = (out_dir / n for n in ("obs.bin", "first.bin", "out.bin"))
    obs.astype("<f4").tofile(obs_path)
    first.astype(np.uint8).tofile(first_path)
    args = [f"{k}={v}" for k, v in settings.items()]
    subprocess.run(
        [str(exe), str(weights), str(obs_path), str(first_path), str(batch), str(out_path), *args],
        check=True,
    )
    return np.fromfile(out_path, dtype="<f4")


@pytest.mark.parametrize(
    "extra",
    [
        dict(mode="elite-mppi", plan_mode="train"),
        dict(mode="mppi", mppi_lambda=0.7, plan_mode="eval", temperature=0.8),
        dict(mode="cem", plan_mode="train", min_std=0.1, max_std=1.5, discount=0.95),
    ],
)
def test_plans_equal_the_rust_planners(gpu, plan_reference, tmp_path, extra):
    rng = np.random.default_rng()
    obs_dim, act_dim, batch, calls = 5, 2, 3, 3
    seed = int(rng.integers(1, 2**31))
    model = pompc.WorldModel.init(gpu, "tiny", obs_dim, act_dim, seed=seed)
    weights = tmp_path / "w.safetensors"
    model.save(weights)
    # Fresh weights from the file, as the Rust side reads them.
    model = pompc.WorldModel.load(gpu, weights)
    obs = rng.uniform(-1.5, 1.5, size=(calls, batch, obs_dim)).astype(np.float32)
    first = np.array([[True] * batch, [False, True, False], [False] * batch])
    settings = dict(SETTINGS, seed=int(rng.integers(0, 2**40)), **extra)
    ref = reference_plans(plan_reference, weights, obs, first, settings, tmp_path)

    planner = pompc.Planner(model, **settings)
    h = settings["horizon"]
    per_call = batch * act_dim * (1 + 2 * h) + 2 * batch
    assert ref.size == calls * per_call
    for c in range(calls):
        plan = planner.plan(obs[c], first[c])
        r = ref[c * per_call : (c + 1) * per_call]
        sizes = [batch * act_dim, batch * h * act_dim, batch * h * act_dim, batch, batch]
        action, mean, std, value, chosen = np.split(r, np.cumsum(sizes)[:-1])
        tag = f"call {c} seed {seed} {settings}"
        assert plan.action.shape == (batch, act_dim) and plan.action.dtype == np.float32
        assert plan.mean.shape == (batch, h, act_dim) and plan.std.shape == (batch, h, act_dim)
        assert plan.value.shape == (batch,) and plan.chosen.shape == (batch,)
        np.testing.assert_array_equal(plan.chosen, chosen.astype(np.uint32), err_msg=tag)
        for name, got, want in [
            ("action", plan.action.ravel(), action),
            ("mean", plan.mean.ravel(), mean),
            ("std", plan.std.ravel(), std),
            ("value", plan.value, value),
        ]:
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6, err_msg=f"{name}: {tag}")
    assert planner.calls == calls


def test_first_step_only_and_single_environment(gpu):
    model = pompc.WorldModel.init(gpu, "tiny", 4, 3, seed=5)
    obs = np.random.default_rng().normal(size=(2, 4)).astype(np.float32)
    full = pompc.Planner(model, **SETTINGS, seed=9).plan(obs, [True, True])
    short = pompc.Planner(model, full_distribution=False, **SETTINGS, seed=9).plan(obs, True)
    assert short.mean.shape == (2, 1, 3)
    np.testing.assert_array_equal(short.mean[:, 0], full.mean[:, 0])
    np.testing.assert_array_equal(short.std[:, 0], full.std[:, 0])
    np.testing.assert_array_equal(short.action, full.action)
    # A 1-D observation is a batch of one (the noise streams depend on the batch size).
    one = pompc.Planner(model, **SETTINGS, seed=9).plan(obs[0], True)
    batch_of_one = pompc.Planner(model, **SETTINGS, seed=9).plan(obs[:1], [True])
    assert one.action.shape == (3,) and one.mean.shape == (3, 3)
    assert isinstance(one.value, float)
    np.testing.assert_array_equal(one.action, batch_of_one.action[0])
    np.testing.assert_array_equal(one.mean, batch_of_one.mean[0])


def test_a_planner_keeps_its_model_and_gpu_alive():
    model = pompc.WorldModel.init(pompc.Gpu(), "tiny", 3, 1, seed=1)
    planner = pompc.Planner(model, **SETTINGS)
    del model
    gc.collect()
    plan = planner.plan(np.zeros((1, 3), np.float32), True)
    assert np.isfinite(plan.action).all()
    assert planner.model.obs_dim == 3


def test_config_round_trips_and_defaults_are_tdmpc2s(gpu):
    model = pompc.WorldModel.init(gpu, "tiny", 3, 2, seed=1)
    cfg = pompc.Planner(model).config
    assert (cfg["horizon"], cfg["num_samples"], cfg["num_elites"]) == (3, 512, 64)
    assert (cfg["num_pi_trajs"], cfg["iterations"], cfg["mode"]) == (24, 6, "elite-mppi")
    again = pompc.Planner(model, **dict(cfg, num_samples=64, num_elites=8)).config
    assert again == dict(cfg, num_samples=64, num_elites=8)


def test_model_save_load_round_trip(gpu, tmp_path):
    m = pompc.WorldModel.init(gpu, "tiny", 6, 2, seed=4)
    m.save(tmp_path / "m.safetensors")
    back = pompc.WorldModel.load(gpu, str(tmp_path / "m.safetensors"))
    assert back.spec == m.spec and back.param_count == m.param_count
    obs = np.ones((2, 6), np.float32)
    a = pompc.Planner(m, **SETTINGS).plan(obs, True)
    b = pompc.Planner(back, **SETTINGS).plan(obs, True)
    np.testing.assert_array_equal(a.action, b.action)
