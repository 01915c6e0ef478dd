"""The dm_control adapter on a fake dm_control environment, the trainer driving Python
environments (the Rust Env trait over Gymnasium's API), and Python exceptions from
environments and callbacks coming back unchanged."""

import copy

import numpy as np
import pytest

import pompc
from pompc.dmc import DMCEnv

from fake_dmc import PointMass, loader


def test_adapter_flattens_repeats_and_ends_episodes():
    inner = PointMass(seed=3, limit=20)
    env = DMCEnv(env=inner, action_repeat=2)
    assert env.observation_space.shape == (6,) and env.action_space.shape == (1,)
    assert env.episode_len == 10 and env.action_repeat == 2
    obs, info = env.reset(seed=7)
    assert obs.dtype == np.float32 and info == {}
    np.testing.assert_allclose(obs, [inner.x, 0.0, inner.x, -inner.x, 0.0, 0.0], rtol=1e-6)
    # A twin stepped by hand: the adapter holds the action for two simulator steps.
    twin = PointMass(seed=0, limit=20)
    twin.reset()
    twin.x = inner.x
    want = twin.step([0.5]).reward + twin.step([0.5]).reward
    obs, reward, terminated, truncated, _ = env.step(np.array([0.5], np.float32))
    assert inner.sim_steps == 2 and inner.actions == [0.5, 0.5]
    assert reward == pytest.approx(want) and not terminated and not truncated
    np.testing.assert_allclose(obs[:2], [twin.x, twin.v], rtol=1e-6)
    env.step(np.array([3.0]))  # clipped to the spec's bound
    assert inner.actions[-1] == 1.0
    with pytest.raises(ValueError, match="not finite"):
        env.step(np.array([np.nan]))
    for _ in range(7):
        assert not env.step(np.zeros(1))[3]
    assert env.step(np.zeros(1))[3], "the 10th agent step is the 20th simulator step: truncated"


def test_reset_seed_reproduces_episodes():
    env = DMCEnv("point", "reach", loader=loader)
    a = env.reset(seed=5)[0]
    b = env.reset(seed=6)[0]
    c = env.reset(seed=5)[0]
    np.testing.assert_array_equal(a, c)
    assert not np.array_equal(a, b)
    twin = copy.deepcopy(env)
    assert isinstance(twin.env, PointMass) and twin.env is not env.env
    np.testing.assert_array_equal(twin.reset(seed=5)[0], a)
    with pytest.raises(TypeError, match="eval_env"):
        copy.deepcopy(DMCEnv(env=PointMass()))


def small(**kw):
    return dict(quick=True, eval_every=0, batch=16, planner=dict(num_samples=16, num_elites=4,
                num_pi_trajs=2, iterations=2), **kw)


def test_trainer_drives_a_python_environment(gpu, tmp_path):
    env = DMCEnv("point", "reach", loader=loader, action_repeat=2)
    events = []
    tr = pompc.Trainer(env, "po-mpc", lam=1.0, seed=4, steps=100, gpu=gpu, **small(log_every=5))
    assert tr.config["env"] == "point-reach" and tr.config["seed_steps"] == 10
    assert tr.run(25, callback=events.append) == 25
    kinds = {e["kind"] for e in events}
    assert {"episode", "pretrained", "losses"} <= kinds
    assert env.env.sim_steps == 50, "25 agent steps of 2 simulator steps each"
    episodes = [e for e in events if e["kind"] == "episode"]
    assert [e["step"] for e in episodes] == [10, 20]
    assert tr.history["step"] == [10, 20] and tr.history["eval"] == [False, False]
    assert tr.updates == 10 + 15
    returns = tr.evaluate(2, seed=1)
    assert len(returns) == 2 and all(0.0 <= r <= 20.0 for r in returns)
    # Checkpoint and resume: counters and history come back; other settings are refused.
    path = tmp_path / "run.safetensors"
    tr.save(path)
    back = pompc.Trainer.resume(path, DMCEnv("point", "reach", loader=loader), "po-mpc",
                                seed=4, steps=100, gpu=gpu, **small())
    assert back.step == 25 and back.history == tr.history
    assert back.run(10) == 35
    with pytest.raises(ValueError, match="pompc.method"):
        pompc.Trainer.resume(path, DMCEnv("point", "reach", loader=loader), "tdmpc2", seed=4,
                             gpu=gpu, **small())
    model = tr.world_model()
    assert model.obs_dim == 6 and model.action_dim == 1


def test_a_callback_stops_the_pretraining_and_a_resumed_run_finishes_it(gpu, tmp_path):
    # 60 seed steps: 60 pre-training updates, one progress report (at 50).
    kw = dict(seed=2, steps=70, gpu=gpu, **small(seed_steps=60))
    tr = pompc.Trainer(DMCEnv("point", "reach", loader=loader), "po-mpc", **kw)
    seen = []

    def stop_in_pretraining(e):
        seen.append(e)
        return e["kind"] != "pretraining"

    assert tr.run(70, callback=stop_in_pretraining) == 60
    assert seen[-1] == {"kind": "pretraining", "step": 60, "updates": 50, "total": 60}
    assert (tr.step, tr.updates) == (60, 50)
    path = tmp_path / "stopped.safetensors"
    tr.save(path)
    back = pompc.Trainer.resume(path, DMCEnv("point", "reach", loader=loader), "po-mpc", **kw)
    assert (back.step, back.updates) == (60, 50)
    rest = []
    assert back.run(5, callback=rest.append) == 65
    assert rest[0]["kind"] == "pretrained" and rest[0]["updates"] == 60
    assert back.updates == 65


class Boom(Exception):
    pass


class Exploding(DMCEnv):
    def __init__(self, at, **kw):
        super().__init__("point", "reach", loader=loader, **kw)
        self.at, self.n = at, 0

    def step(self, action):
        self.n += 1
        if self.n == self.at:
            raise Boom(f"step {self.n}")
        return super().step(action)

    def __deepcopy__(self, memo):
        return DMCEnv("point", "reach", loader=loader)


def test_python_exceptions_come_back_unchanged(gpu):
    tr = pompc.Trainer(Exploding(at=4), seed=1, steps=100, gpu=gpu, **small())
    with pytest.raises(Boom, match="step 4"):
        tr.run(20)
    assert tr.step == 3

    tr = pompc.Trainer(DMCEnv("point", "reach", loader=loader), seed=1, gpu=gpu, **small())

    def callback(e):
        if e["kind"] == "episode":
            raise KeyError("from the callback")

    with pytest.raises(KeyError, match="from the callback"):
        tr.run(30, callback)
    assert tr.step == 10
    # Returning False stops the run at that event, without an error.
    assert tr.run(30, lambda e: e["kind"] != "episode") == 20


def test_trainer_arguments_are_checked(gpu):
    env = DMCEnv("point", "reach", loader=loader)
    with pytest.raises(ValueError, match="unknown method"):
        pompc.Trainer(env, "ppo", gpu=gpu)
    with pytest.raises(ValueError, match="lambda"):
        pompc.Trainer(env, "tdmpc2", lam=1.0, gpu=gpu)
    with pytest.raises(TypeError, match="unknown training setting \"batch_size\""):
        pompc.Trainer(env, gpu=gpu, batch_size=3)
    with pytest.raises(TypeError, match="reset"):
        pompc.Trainer(object(), gpu=gpu)
    with pytest.raises(ValueError, match="episode length"):
        pompc.Trainer(NoLength(), gpu=gpu)
    with pytest.raises(ValueError, match="seed_steps"):
        pompc.Trainer(env, gpu=gpu, **dict(small(), seed_steps=3))
    # Built-in tasks by name or as pompc.Env.
    for task in ["pendulum-swingup", pompc.make_env("pendulum-swingup")]:
        tr = pompc.Trainer(task, gpu=gpu, steps=10, **small())
        assert tr.config["env"] == "pendulum-swingup"
        assert tr.config["tensor_core_updates"] is False
    # The updates on tensor cores: refused where the adapter has none (CI's lavapipe).
    if gpu.info["cooperative_matrix"]:
        tr = pompc.Trainer("pendulum-swingup", gpu=gpu, steps=10, tensor_core_updates=True,
                           **small())
        assert tr.config["tensor_core_updates"] is True
    else:
        with pytest.raises(RuntimeError, match="cooperative matrices"):
            pompc.Trainer("pendulum-swingup", gpu=gpu, steps=10, tensor_core_updates=True,
                          **small())


class NoLength:
    action_space = observation_space = None

    def __init__(self):
        from pompc.dmc import Box

        self.action_space = Box(np.full(1, -1.0), np.full(1, 1.0))
        self.observation_space = Box(np.zeros(2), np.ones(2))

    def reset(self, seed=None):
        return np.zeros(2, np.float32), {}

    def step(self, action):
        return np.zeros(2, np.float32), 0.0, False, False, {}
