"""Bad inputs raise the right Python exceptions, before any GPU work, and leave the object
usable: wrong shapes and dtypes, NaN, non-contiguous arrays, WGSL syntax errors, unknown
settings and names, missing files."""

import numpy as np
import pytest

import pompc

SMALL = dict(num_samples=16, num_elites=4, num_pi_trajs=2, iterations=1)


@pytest.fixture(scope="module")
def planner(gpu):
    return pompc.Planner(pompc.WorldModel.init(gpu, "tiny", 4, 2, seed=0), **SMALL)


def test_planner_rejects_bad_observations(planner):
    good = np.zeros((2, 4), np.float32)
    with pytest.raises(ValueError, match=r"shape \[2, 5\]"):
        planner.plan(np.zeros((2, 5), np.float32), True)
    with pytest.raises(ValueError, match="shape"):
        planner.plan(np.zeros((2, 2, 4), np.float32), True)
    with pytest.raises(TypeError, match="float32"):
        planner.plan(np.zeros((2, 4), np.float64), True)
    with pytest.raises(TypeError, match="numpy float32 array"):
        planner.plan([[0.0] * 4] * 2, True)
    with pytest.raises(ValueError, match="contiguous"):
        planner.plan(np.zeros((4, 2), np.float32).T, True)
    with pytest.raises(ValueError, match="contiguous"):
        planner.plan(np.zeros((2, 8), np.float32)[:, ::2], True)
    nan = good.copy()
    nan[1, 3] = np.nan
    with pytest.raises(ValueError, match="environment 1"):
        planner.plan(nan, True)
    inf = good.copy()
    inf[0, 0] = np.inf
    with pytest.raises(ValueError):
        planner.plan(inf, True)
    with pytest.raises(ValueError, match="3 entries for 2"):
        planner.plan(good, [True, False, True])
    with pytest.raises(TypeError, match="bool"):
        planner.plan(good, "yes")
    with pytest.raises(ValueError, match="no environments"):
        planner.plan(np.zeros((0, 4), np.float32), True)
    # Still usable.
    assert planner.plan(good, True).action.shape == (2, 2)


def test_planner_settings_are_checked(gpu):
    model = pompc.WorldModel.init(gpu, "tiny", 4, 2, seed=0)
    with pytest.raises(TypeError, match="unknown planner setting \"horizn\""):
        pompc.Planner(model, horizn=3)
    with pytest.raises(ValueError, match="horizon 0"):
        pompc.Planner(model, horizon=0)
    with pytest.raises(ValueError, match="elites"):
        pompc.Planner(model, num_samples=8, num_elites=9, num_pi_trajs=1)
    with pytest.raises(ValueError, match="mode"):
        pompc.Planner(model, mode="gradient")
    with pytest.raises(ValueError, match="mppi_lambda"):
        pompc.Planner(model, mppi_lambda=0.5)
    with pytest.raises(ValueError, match="lambda"):
        pompc.Planner(model, mode="mppi", mppi_lambda=float("nan"))
    with pytest.raises(TypeError, match="horizon"):
        pompc.Planner(model, horizon="three")
    with pytest.raises(ValueError, match="planner setting horizon: expected a non-negative"):
        pompc.Planner(model, horizon=-1)


def test_models_and_devices(gpu, tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        pompc.WorldModel.load(gpu, tmp_path / "nope.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError):
        pompc.WorldModel.load(gpu, bad)
    with pytest.raises(ValueError, match="model"):
        pompc.WorldModel.init(gpu, "huge", 4, 2)
    with pytest.raises(ValueError):
        pompc.WorldModel.init(gpu, "tiny", 0, 2)
    with pytest.raises(ValueError, match="backend"):
        pompc.Gpu(backend="cuda")
    with pytest.raises(RuntimeError, match="no GPU adapter"):
        pompc.Gpu(adapter="no adapter has this name")
    with pytest.raises(ValueError, match="unknown environment"):
        pompc.make_env("cartpole-swingdown")


WGSL_OK = """
fn dynamics(x: State, u: Control, t: u32) -> State { return State(x[0] + DT * u[0]); }
fn running_cost(x: State, u: Control, t: u32) -> f32 { return x[0] * x[0]; }
fn terminal_cost(x: State) -> f32 { return 0.0; }
"""


def test_wgsl_errors_carry_the_users_line_numbers(gpu):
    broken = WGSL_OK.replace("return x[0] * x[0];", "return x[0] * x[0]")  # line 3
    with pytest.raises(pompc.ShaderError) as e:
        pompc.Mppi(broken, 1, 1, horizon=5, samples=8, gpu=gpu)
    assert 3 in e.value.lines, (e.value.lines, str(e.value))
    assert "user:3" in str(e.value)
    assert e.value.shader == "user"
    assert isinstance(e.value, ValueError)
    missing = WGSL_OK.replace("fn terminal_cost(x: State) -> f32 { return 0.0; }", "")
    with pytest.raises(pompc.ShaderError, match="terminal_cost"):
        pompc.Mppi(missing, 1, 1, horizon=5, samples=8, gpu=gpu)


def test_mppi_rejects_bad_inputs(gpu):
    with pytest.raises(ValueError, match="shape"):
        pompc.Mppi(WGSL_OK, 0, 1, gpu=gpu)
    with pytest.raises(ValueError, match="horizon"):
        pompc.Mppi(WGSL_OK, 1, 1, horizon=0, gpu=gpu)
    with pytest.raises(ValueError, match="sigma"):
        pompc.Mppi(WGSL_OK, 1, 1, sigma=0.0, gpu=gpu)
    with pytest.raises(ValueError, match="sigma"):
        pompc.Mppi(WGSL_OK, 1, 1, sigma=[0.1, 0.2], gpu=gpu)
    with pytest.raises(ValueError, match="at most"):
        pompc.Mppi(WGSL_OK, 100_000, 1, gpu=gpu)
    m = pompc.Mppi(WGSL_OK, 1, 1, horizon=5, samples=8, gpu=gpu)
    with pytest.raises(ValueError, match="shape"):
        m.step(np.zeros(2, np.float32))
    with pytest.raises(TypeError, match="float32"):
        m.step(np.zeros(1, np.int32))
    with pytest.raises(ValueError, match="state component 0"):
        m.step(np.array([np.nan], np.float32))
    with pytest.raises(ValueError, match="shape"):
        m.set_params(np.zeros(1, np.float32))  # param_len 0
    with pytest.raises(ValueError, match="outside"):
        m.set_controls(np.full((5, 1), 3.0, np.float32))
    assert m.step(np.ones(1, np.float32)).shape == (1,)


def test_environments_reject_bad_actions():
    env = pompc.make_env("pendulum-swingup")
    env.reset(seed=1)
    with pytest.raises(ValueError, match="shape"):
        env.step(np.zeros(2, np.float32))
    with pytest.raises(ValueError, match="not finite"):
        env.step(np.array([np.nan], np.float32))
    obs, reward, terminated, truncated, info = env.step(np.zeros(1, np.float32))
    assert obs.shape == (env.obs_dim,) and 0.0 <= reward <= 2.0
    assert not terminated and not truncated and info == {}
