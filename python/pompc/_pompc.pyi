"""Type stubs of the extension module pompc._pompc (see the docstrings at run time)."""

from os import PathLike
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import numpy.typing as npt

__version__: str

F32 = npt.NDArray[np.float32]
_Path = Union[str, PathLike[str]]

class ShaderError(ValueError):
    """WGSL that does not compile; ``lines`` are the user's own line numbers it names."""

    lines: list[int]
    shader: str

def adapters(backend: Optional[str] = None) -> list[dict[str, Any]]:
    """The adapters wgpu can see: name, backend, device_type, driver, driver_info, vendor, device."""

def make_env(name: str) -> Env:
    """A built-in Rust task by name (see ``env_names()``)."""

def env_names() -> list[str]:
    """Names ``make_env`` accepts."""

def builtin_problem(name: str) -> dict[str, Any]:
    """WGSL and sizes of a ready-made MPPI problem: "cartpole" or "diff-drive"."""

class Gpu:
    """A GPU device; ``backend`` vulkan/metal/dx12/gl, ``adapter`` a name substring,
    ``precision`` f32/f16/coop."""

    def __init__(
        self,
        backend: Optional[str] = None,
        adapter: Optional[str] = None,
        precision: Optional[str] = None,
    ) -> None: ...
    @property
    def info(self) -> dict[str, Any]: ...

class WorldModel:
    """TD-MPC2's world model on a Gpu."""

    @staticmethod
    def load(gpu: Gpu, path: _Path) -> WorldModel: ...
    @staticmethod
    def init(
        gpu: Gpu, size: Union[str, int], obs_dim: int, action_dim: int, seed: int = 0
    ) -> WorldModel: ...
    def save(self, path: _Path) -> None: ...
    @property
    def gpu(self) -> Gpu: ...
    @property
    def obs_dim(self) -> int: ...
    @property
    def action_dim(self) -> int: ...
    @property
    def spec(self) -> dict[str, Any]: ...
    @property
    def param_count(self) -> int: ...

class Plan:
    """action [B, A], mean and std [B, H, A], value [B], chosen [B]."""

    action: F32
    mean: F32
    std: F32
    value: Union[F32, float]
    chosen: Union[npt.NDArray[np.uint32], int]

class Planner:
    """TD-MPC2's MPPI planner over a WorldModel; every PlannerConfig field a keyword."""

    def __init__(
        self,
        model: WorldModel,
        full_distribution: bool = True,
        *,
        horizon: int = ...,
        num_samples: int = ...,
        num_elites: int = ...,
        num_pi_trajs: int = ...,
        iterations: int = ...,
        min_std: float = ...,
        max_std: float = ...,
        temperature: float = ...,
        discount: float = ...,
        mode: str = ...,
        mppi_lambda: float = ...,
        plan_mode: str = ...,
        seed: int = ...,
    ) -> None: ...
    def plan(self, obs: F32, first_step: Union[bool, Sequence[bool], npt.NDArray[np.bool_]]) -> Plan: ...
    @property
    def calls(self) -> int: ...
    @property
    def max_batch(self) -> int: ...
    @property
    def config(self) -> dict[str, Any]: ...
    @property
    def model(self) -> WorldModel: ...

class Mppi:
    """Classic MPPI over WGSL dynamics and costs."""

    def __init__(
        self,
        dynamics_wgsl: str,
        state_dim: int,
        control_dim: int,
        horizon: int = 100,
        samples: int = 1024,
        *,
        param_len: int = 0,
        lambda_: float = 1.0,
        gamma: Optional[float] = None,
        sigma: Union[float, Sequence[float], None] = None,
        u_min: Union[float, Sequence[float], None] = None,
        u_max: Union[float, Sequence[float], None] = None,
        dt: float = 0.02,
        seed: int = 1,
        trusted: bool = False,
        keep_rollouts: int = 0,
        name: str = "user",
        gpu: Optional[Gpu] = None,
    ) -> None: ...
    def step(self, state: F32) -> F32: ...
    def set_params(self, params: F32) -> None: ...
    def rollouts(self) -> tuple[F32, F32]: ...
    def keep_rollouts(self, n: int) -> None: ...
    def controls(self) -> F32: ...
    def set_controls(self, controls: F32) -> None: ...
    def reset(self) -> None: ...
    @property
    def last_step(self) -> Optional[dict[str, Any]]: ...
    @property
    def calls(self) -> int: ...
    @property
    def gpu(self) -> Gpu: ...

class Env:
    """A built-in Rust task with Gymnasium's reset/step."""

    name: str
    obs_dim: int
    action_dim: int
    episode_len: int
    action_repeat: int
    def reset(self, seed: Optional[int] = None) -> tuple[F32, dict[str, Any]]: ...
    def step(self, action: F32) -> tuple[F32, float, bool, bool, dict[str, Any]]: ...

class Trainer:
    """PO-MPC-family training over a built-in task or a Gymnasium-style environment."""

    def __init__(
        self,
        env: Any,
        method: str = "po-mpc",
        lam: Optional[float] = None,
        model: Union[str, int, None] = None,
        seed: int = 0,
        *,
        steps: int = 1_000_000,
        quick: bool = False,
        gpu: Optional[Gpu] = None,
        eval_env: Any = None,
        episode_len: Optional[int] = None,
        name: Optional[str] = None,
        planner: Optional[dict[str, Any]] = None,
        **config: Any,
    ) -> None: ...
    @staticmethod
    def resume(
        path: _Path,
        env: Any,
        method: str = "po-mpc",
        lam: Optional[float] = None,
        model: Union[str, int, None] = None,
        seed: int = 0,
        *,
        steps: int = 1_000_000,
        quick: bool = False,
        gpu: Optional[Gpu] = None,
        eval_env: Any = None,
        episode_len: Optional[int] = None,
        name: Optional[str] = None,
        planner: Optional[dict[str, Any]] = None,
        **config: Any,
    ) -> Trainer: ...
    def run(self, steps: int, callback: Optional[Callable[[dict[str, Any]], Any]] = None) -> int: ...
    def evaluate(self, episodes: int = 10, seed: int = 0) -> list[float]: ...
    def save(self, path: _Path) -> None: ...
    def world_model(self) -> WorldModel: ...
    @property
    def step(self) -> int: ...
    @property
    def updates(self) -> int: ...
    @property
    def history(self) -> dict[str, list[Any]]: ...
    @property
    def config(self) -> dict[str, Any]: ...
    @property
    def gpu(self) -> Gpu: ...
