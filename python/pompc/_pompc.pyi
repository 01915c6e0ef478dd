"""Type stubs of the extension module pompc._pompc (see the docstrings at run time)."""

from os import PathLike
from typing import Any, Callable, Optional, Sequence, Union, final

import numpy as np
import numpy.typing as npt

__all__ = [
    "DTypeError",
    "Env",
    "Gpu",
    "Mppi",
    "Plan",
    "Planner",
    "Population",
    "ShaderError",
    "Trainer",
    "WorldModel",
    "__version__",
    "adapters",
    "builtin_problem",
    "env_names",
    "make_env",
]
__version__: str

_F32 = npt.NDArray[np.float32]
_Path = Union[str, PathLike[str]]

class DTypeError(ValueError, TypeError):
    """An array of the wrong dtype (pompc takes float32): both a ValueError and a TypeError."""

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

@final
class Gpu:
    """A GPU device; ``backend`` vulkan/metal/dx12/gl, ``adapter`` a name substring,
    ``precision`` f32/f16/coop."""

    def __new__(
        cls,
        backend: Optional[str] = None,
        adapter: Optional[str] = None,
        precision: Optional[str] = None,
    ) -> Gpu: ...
    @property
    def info(self) -> dict[str, Any]: ...

@final
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

@final
class Plan:
    """action [B, A], mean and std [B, H, A], value [B], chosen [B]."""

    action: _F32
    mean: _F32
    std: _F32
    value: Union[_F32, float]
    chosen: Union[npt.NDArray[np.uint32], int]

@final
class Planner:
    """TD-MPC2's MPPI planner over a WorldModel; every PlannerConfig field a keyword."""

    def __new__(
        cls,
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
    ) -> Planner: ...
    def plan(self, obs: _F32, first_step: Union[bool, Sequence[bool], npt.NDArray[np.bool_]]) -> Plan: ...
    @property
    def calls(self) -> int: ...
    @property
    def max_batch(self) -> int: ...
    @property
    def config(self) -> dict[str, Any]: ...
    @property
    def model(self) -> WorldModel: ...

@final
class Mppi:
    """Classic MPPI over WGSL dynamics and costs."""

    def __new__(
        cls,
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
    ) -> Mppi: ...
    def step(self, state: _F32) -> _F32: ...
    def set_params(self, params: _F32) -> None: ...
    def rollouts(self) -> tuple[_F32, _F32]: ...
    def keep_rollouts(self, n: int) -> None: ...
    def controls(self) -> _F32: ...
    def set_controls(self, controls: _F32) -> None: ...
    def reset(self) -> None: ...
    @property
    def last_step(self) -> Optional[dict[str, Any]]: ...
    @property
    def calls(self) -> int: ...
    @property
    def gpu(self) -> Gpu: ...

@final
class Env:
    """A built-in Rust task with Gymnasium's reset/step."""

    name: str
    obs_dim: int
    action_dim: int
    episode_len: int
    action_repeat: int
    def reset(self, seed: Optional[int] = None) -> tuple[_F32, dict[str, Any]]: ...
    def step(self, action: _F32) -> tuple[_F32, float, bool, bool, dict[str, Any]]: ...

@final
class Trainer:
    """PO-MPC-family training over a built-in task or a Gymnasium-style environment."""

    def __new__(
        cls,
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

@final
class Population:
    """Several PO-MPC-family runs of one task trained together on one Gpu."""

    def __new__(
        cls,
        env: Any,
        methods: list[str] = ...,
        lams: Optional[list[float]] = None,
        seeds: list[int] = ...,
        model: Union[str, int, None] = None,
        *,
        steps: int = 1_000_000,
        quick: bool = False,
        gpu: Optional[Gpu] = None,
        episode_len: Optional[int] = None,
        name: Optional[str] = None,
        planner: Optional[dict[str, Any]] = None,
        **config: Any,
    ) -> Population: ...
    @staticmethod
    def resume(
        dir: _Path,
        env: Any,
        methods: list[str] = ...,
        lams: Optional[list[float]] = None,
        seeds: list[int] = ...,
        model: Union[str, int, None] = None,
        *,
        steps: int = 1_000_000,
        quick: bool = False,
        gpu: Optional[Gpu] = None,
        episode_len: Optional[int] = None,
        name: Optional[str] = None,
        planner: Optional[dict[str, Any]] = None,
        **config: Any,
    ) -> Population: ...
    def run(
        self, steps: int, callback: Optional[Callable[[int, dict[str, Any]], Any]] = None
    ) -> list[int]: ...
    def save(self, dir: _Path) -> None: ...
    def history(self, agent: int) -> dict[str, list[Any]]: ...
    def world_model(self, agent: int) -> WorldModel: ...
    def __len__(self) -> int: ...
    @property
    def agents(self) -> list[dict[str, Any]]: ...
    @property
    def steps(self) -> list[int]: ...
    @property
    def shares_plan_steps(self) -> Optional[str]: ...
    @property
    def shares_updates(self) -> Optional[str]: ...
    @property
    def gpu(self) -> Gpu: ...
