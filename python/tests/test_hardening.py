"""Adversarial inputs: every one is a clear Python exception of the right kind (or works),
never garbage, a hang or a crash. Integers out of range, dtypes, files that are not regular
files, re-entrant and concurrent calls, callbacks that are not callable, the dm_control
adapter's arguments."""

import os
import pathlib
import stat
import threading

import numpy as np
import pytest

import pompc
from pompc.dmc import Box, DMCEnv

from fake_dmc import loader

SMALL = dict(num_samples=16, num_elites=4, num_pi_trajs=2, iterations=1)
WGSL = """
fn dynamics(x: State, u: Control, t: u32) -> State { return State(x[0] + DT * u[0]); }
fn running_cost(x: State, u: Control, t: u32) -> f32 { return x[0] * x[0]; }
fn terminal_cost(x: State) -> f32 { return 0.0; }
"""


def small(**kw):
    return dict(quick=True, eval_every=0, batch=16, planner=dict(num_samples=16, num_elites=4,
                num_pi_trajs=2, iterations=2), **kw)


def point():
    return DMCEnv("point", "reach", loader=loader)


def test_negative_and_huge_integers_are_value_errors(gpu):
    """Counts, sizes and seeds below 0 or beyond their type were PyO3's OverflowError, which
    `except ValueError` misses; now a ValueError that names the value (and the setting)."""
    model = pompc.WorldModel.init(gpu, "tiny", 4, 2, seed=0)
    neg = "expected a non-negative integer, got -1"
    for kw in [dict(horizon=-1), dict(num_samples=-1), dict(num_elites=-1), dict(seed=-1)]:
        with pytest.raises(ValueError, match=f"planner setting {next(iter(kw))}: {neg}"):
            pompc.Planner(model, **kw)
    with pytest.raises(ValueError, match="too large"):
        pompc.Planner(model, seed=2**64)
    with pytest.raises(ValueError, match="too large"):
        pompc.Planner(model, horizon=2**200)
    with pytest.raises(TypeError):  # not an integer at all: still a TypeError
        pompc.Planner(model, horizon=3.0)
    for args, kw in [((-1, 1), {}), ((1, -1), {}), ((1, 1), dict(samples=-8)),
                     ((1, 1), dict(seed=-1)), ((1, 1), dict(param_len=-1)),
                     ((1, 1), dict(keep_rollouts=-1)), ((2**64, 1), {})]:
        with pytest.raises(ValueError):
            pompc.Mppi(WGSL, *args, gpu=gpu, **kw)
    with pytest.raises(ValueError, match=neg):
        pompc.WorldModel.init(gpu, "tiny", -1, 2)
    with pytest.raises(ValueError, match=neg):
        pompc.WorldModel.init(gpu, "tiny", 4, 2, seed=-1)
    with pytest.raises(ValueError, match="model size"):
        pompc.WorldModel.init(gpu, -1, 4, 2)  # was a TypeError saying ints are fine
    with pytest.raises(ValueError, match="model size"):
        pompc.WorldModel.init(gpu, 2**70, 4, 2)
    env = pompc.make_env("pendulum-swingup")
    with pytest.raises(ValueError, match=neg):
        env.reset(seed=-1)
    assert env.reset(seed=None)[0].shape == (3,)
    with pytest.raises(ValueError, match=neg):
        pompc.Trainer(point(), gpu=gpu, steps=-1, **small())
    with pytest.raises(ValueError, match=neg):
        pompc.Trainer(point(), gpu=gpu, episode_len=-1, **small())
    with pytest.raises(ValueError, match=f"training setting batch: {neg}"):
        pompc.Trainer(point(), gpu=gpu, **dict(small(), batch=-1))
    tr = pompc.Trainer("pendulum-swingup", gpu=gpu, steps=10, **small())
    with pytest.raises(ValueError, match=neg):
        tr.run(-1)
    with pytest.raises(ValueError, match=neg):
        tr.evaluate(-1)
    with pytest.raises(ValueError, match=neg):
        tr.evaluate(1, seed=-1)
    m = pompc.Mppi(WGSL, 1, 1, horizon=5, samples=8, gpu=gpu)
    with pytest.raises(ValueError, match=neg):
        m.keep_rollouts(-1)


def test_wrong_dtypes_are_value_errors_and_type_errors(gpu):
    """The rule: a wrong dtype is a ValueError. It was a TypeError only; DTypeError is both,
    so code written for either keeps working."""
    assert issubclass(pompc.DTypeError, ValueError) and issubclass(pompc.DTypeError, TypeError)
    planner = pompc.Planner(pompc.WorldModel.init(gpu, "tiny", 4, 2, seed=0), **SMALL)
    m = pompc.Mppi(WGSL, 1, 1, horizon=5, samples=8, gpu=gpu)
    for dtype in [np.float64, np.int32, np.bool_, object, np.float16, ">f4"]:
        with pytest.raises(pompc.DTypeError, match="float32"):
            planner.plan(np.zeros((2, 4), dtype), True)
        with pytest.raises(ValueError, match="float32"):
            m.step(np.zeros(1, dtype))
        with pytest.raises(ValueError, match="float32"):
            pompc.make_env("pendulum-swingup").step(np.zeros(1, dtype))
    # Not an array at all stays a plain TypeError.
    with pytest.raises(TypeError, match="numpy float32 array") as e:
        m.step([0.0])
    assert not isinstance(e.value, ValueError)


def test_saving_over_a_special_file_leaves_it_alone(gpu, tmp_path):
    """Saves rename a temporary file over the target: as root, save("/dev/null") replaced
    /dev/null with a regular file. A FIFO stands in for the device here."""
    model = pompc.WorldModel.init(gpu, "tiny", 4, 2, seed=0)
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(OSError, match="not a regular file"):
        model.save(fifo)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    tr = pompc.Trainer("pendulum-swingup", gpu=gpu, steps=10, **small())
    with pytest.raises(OSError, match="not a regular file"):
        tr.save(fifo)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    # A symbolic link: its target gets the weights, the link stays.
    target = tmp_path / "weights.safetensors"
    target.write_bytes(b"old")
    link = tmp_path / "link.safetensors"
    link.symlink_to(target)
    model.save(link)
    assert link.is_symlink() and target.stat().st_size > 3
    assert pompc.WorldModel.load(gpu, target).obs_dim == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "link.safetensors", "pipe", "weights.safetensors"]


def finishes(f, seconds=120):
    """Run f in a daemon thread; True if it returned (a deadlock would hang the suite)."""
    out = {}

    def body():
        try:
            out["value"] = f()
        except BaseException as e:  # noqa: BLE001 - handed to the test
            out["error"] = e

    t = threading.Thread(target=body, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), "deadlocked"
    return out


def test_reentrant_calls_raise_instead_of_deadlocking(gpu):
    """A Trainer callback (or Python environment) calling its own trainer took the lock its
    caller held: a deadlock. Now a RuntimeError, and the trainer stays usable."""
    tr = pompc.Trainer(point(), seed=1, steps=100, gpu=gpu, **small())
    out = finishes(lambda: tr.run(12, lambda e: tr.step))
    assert isinstance(out.get("error"), RuntimeError), out
    assert "busy" in str(out["error"])
    out = finishes(lambda: tr.run(12, lambda e: tr.run(1)))
    assert isinstance(out.get("error"), RuntimeError), out
    before = tr.step
    assert tr.run(2) == before + 2  # still usable

    class CallsBack(DMCEnv):
        def step(self, action):
            holder[0].updates
            return super().step(action)

        def __deepcopy__(self, memo):
            return point()

    holder = []
    holder.append(pompc.Trainer(CallsBack("point", "reach", loader=loader), seed=1,
                                steps=100, gpu=gpu, **small()))
    out = finishes(lambda: holder[0].run(3))
    assert isinstance(out.get("error"), RuntimeError), out
    assert holder[0].step == 0


def test_callbacks_are_checked_and_numpy_false_stops(gpu):
    tr = pompc.Trainer(point(), seed=1, steps=100, gpu=gpu, **small())
    # Was accepted, then raised "not callable" at the first event, after training had run.
    with pytest.raises(TypeError, match="callable"):
        tr.run(15, 3)
    assert tr.step == 0
    # numpy's False (a comparison of numpy values) stops the run as False does.
    assert tr.run(30, lambda e: np.float32(1.0) < 0.0 if e["kind"] == "episode" else None) == 10


def test_threads_share_planners_mppi_and_trainers(gpu):
    """Calls from several threads at once (the GIL is released around GPU work) run one at a
    time per object and all complete."""
    model = pompc.WorldModel.init(gpu, "tiny", 4, 2, seed=0)
    planner = pompc.Planner(model, **SMALL)
    m = pompc.Mppi(WGSL, 1, 1, horizon=5, samples=8, gpu=gpu)
    tr = pompc.Trainer(point(), seed=1, steps=100, gpu=gpu, **small())
    errors = []

    def work(i):
        try:
            for _ in range(3):
                assert planner.plan(np.zeros((2, 4), np.float32), True).action.shape == (2, 2)
                assert m.step(np.zeros(1, np.float32)).shape == (1,)
            if i == 0:
                tr.run(10)
            else:
                tr.step, tr.history
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "deadlocked"
    assert errors == []
    assert planner.calls == 12 and m.calls == 12 and tr.step == 10


class Shaped:
    """A Gymnasium-style environment with the given space shapes."""

    def __init__(self, obs_shape):
        self.action_space = Box(np.full(1, -1.0), np.full(1, 1.0))
        self.observation_space = type("Space", (), {"shape": obs_shape})()
        self.episode_len = 10

    def reset(self, seed=None):
        return np.zeros(2, np.float32), {}

    def step(self, action):
        return np.zeros(2, np.float32), 0.0, False, False, {}


def test_space_sizes_that_overflow_are_refused(gpu):
    # 2**32 * 2**32 wrapped to 0 ("0 observations"); 2**32 * (2**32 + 1) to 2**32.
    for shape in [(2**32, 2**32), (2**32 + 1, 2**32)]:
        with pytest.raises(ValueError, match="too large"):
            pompc.Trainer(Shaped(shape), gpu=gpu, eval_env=Shaped(shape), **small())


def test_dmc_adapter_wants_integer_counts():
    """action_repeat=2.5 and sim_steps=2.5 were truncated silently; strings gave "'<' not
    supported", NaN and inf numpy's conversion errors."""
    for bad in [2.5, "2", None, float("nan"), float("inf")]:
        with pytest.raises(TypeError, match="action_repeat"):
            DMCEnv("point", "reach", loader=loader, action_repeat=bad)
        with pytest.raises(TypeError, match="sim_steps"):
            DMCEnv("point", "reach", loader=loader, sim_steps=bad if bad is not None else 1.0)
    env = DMCEnv("point", "reach", loader=loader, action_repeat=np.int64(3), sim_steps=9)
    assert env.action_repeat == 3 and env.episode_len == 3
    with pytest.raises(TypeError, match="seed"):
        env.reset(seed=1.5)
    a = env.reset(seed=np.int64(2))[0]
    np.testing.assert_array_equal(a, env.reset(seed=2)[0])


class Picky(Exception):
    """An exception whose constructor takes two arguments."""

    def __init__(self, a, b):
        super().__init__(a, b)


class RaisesOnConversion:
    def __index__(self):
        raise Picky(1, 2)

    def __float__(self):
        raise Picky(1, 2)


class SpaceRaises(DMCEnv):
    @property
    def action_space(self):
        raise Picky(3, 4)

    @action_space.setter
    def action_space(self, value):
        pass


class CopyRaises(DMCEnv):
    def __init__(self, error):
        super().__init__("point", "reach", loader=loader)
        self.error = error

    def __deepcopy__(self, memo):
        raise self.error


def test_exceptions_from_user_objects_come_back_unchanged(gpu):
    """A setting whose __index__ or __float__ raised an exception class with another
    constructor came back as "TypeError: __init__() missing 1 required positional
    argument"; a property of the environment that raised was reported as missing; a
    KeyboardInterrupt while copying the environment became a ValueError."""
    model = pompc.WorldModel.init(gpu, "tiny", 4, 2, seed=0)
    with pytest.raises(Picky) as e:
        pompc.Planner(model, min_std=RaisesOnConversion())
    assert "while reading planner setting min_std" in e.value.__notes__
    with pytest.raises(Picky):
        pompc.Planner(model, horizon=RaisesOnConversion())
    with pytest.raises(Picky):
        pompc.Trainer(point(), gpu=gpu, **dict(small(), batch=RaisesOnConversion()))
    with pytest.raises(Picky, match="3, 4"):
        pompc.Trainer(SpaceRaises("point", "reach", loader=loader), gpu=gpu, **small())
    with pytest.raises(KeyboardInterrupt):
        pompc.Trainer(CopyRaises(KeyboardInterrupt()), gpu=gpu, **small())
    with pytest.raises(ValueError, match="eval_env") as e:
        pompc.Trainer(CopyRaises(Picky(5, 6)), gpu=gpu, **small())
    assert isinstance(e.value.__cause__, Picky)
    # Missing attributes are still named as such.
    with pytest.raises(TypeError, match="no action_space"):
        pompc.Trainer(type("NoSpaces", (), {"reset": None, "step": None})(), gpu=gpu)
