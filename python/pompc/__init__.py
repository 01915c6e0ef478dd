"""pompc: hand-written WGSL kernels for MPPI planning and PO-MPC learning with TD-MPC2-style
latent world models, from numpy.

- ``Gpu``, ``adapters()``: the device (Vulkan, Metal, DX12, GL; lavapipe on the CPU).
- ``WorldModel``: TD-MPC2's world model, loaded from safetensors or freshly initialized.
- ``Planner``: TD-MPC2's MPPI planner over a world model, batched over environments.
- ``Mppi``: classic MPPI over dynamics and costs written in WGSL.
- ``Trainer``: the PO-MPC family (TD-MPC2, BMPC, TD-M(PC)^2, PO-MPC) training a world model
  on a built-in task (``make_env``) or any Gymnasium-style environment;
  ``pompc.dmc.DMCEnv`` adapts dm_control's suite.
- ``Population``: several such runs (methods, lambdas, seeds of one task) trained together
  on one Gpu, planning and updating in shared dispatches where they can.

Arrays are numpy float32 in and out. Errors: ``ValueError`` for shapes and bad arguments
(negative or too large integers included), ``DTypeError`` (a ``ValueError`` and a
``TypeError``) for arrays of another dtype, ``TypeError`` for wrong types, ``ShaderError`` (a
``ValueError``) for WGSL that does not compile, ``OSError`` for files, ``RuntimeError`` for
the device and for a call into a ``Trainer`` from inside its own callback or environment.
"""

from ._pompc import (
    Env,
    Gpu,
    Mppi,
    Plan,
    Planner,
    Population,
    DTypeError,
    ShaderError,
    Trainer,
    WorldModel,
    __version__,
    adapters,
    builtin_problem,
    env_names,
    make_env,
)

__all__ = [
    "Env",
    "Gpu",
    "Mppi",
    "Plan",
    "Planner",
    "Population",
    "DTypeError",
    "ShaderError",
    "Trainer",
    "WorldModel",
    "__version__",
    "adapters",
    "builtin_problem",
    "env_names",
    "make_env",
]
