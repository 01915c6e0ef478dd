"""dm_control's suite environments behind Gymnasium's API, for ``pompc.Trainer``.

``DMCEnv("cartpole", "swingup")`` loads ``dm_control.suite.load(domain, task)``; it flattens the
observation dict into one float32 vector (in the spec's key order, each entry raveled), holds
each action for ``action_repeat`` simulator steps (DMC's convention in TD-MPC2: 2), sums their
rewards, and ends the episode after the suite's time limit (1000 simulator steps, so 500
agent steps). ``reset(seed=s)`` reseeds the task's random state, so the same seed gives the
same initial state. dm_control is imported only when a task is loaded by name; any object
with dm_control's ``action_spec()``, ``observation_spec()``, ``reset()`` and ``step(action)``
(returning a TimeStep with ``observation``, ``reward``, ``discount`` and ``last()``) can be
wrapped instead.
"""

from __future__ import annotations

import math
import operator
from typing import Any, Callable, Optional

import numpy as np


def _count(name: str, value: Any) -> int:
    """``value`` as a positive int: an int (numpy's too) or a TypeError, at least 1 or a
    ValueError (a float such as 2.5 is refused rather than truncated)."""
    try:
        n = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {value!r}") from None
    if n < 1:
        raise ValueError(f"{name} {n} must be at least 1")
    return n


class Box:
    """The part of Gymnasium's ``Box`` that pompc reads: ``shape``, ``low``, ``high``."""

    def __init__(self, low: np.ndarray, high: np.ndarray) -> None:
        self.low = np.asarray(low, dtype=np.float32)
        self.high = np.asarray(high, dtype=np.float32)
        if self.low.shape != self.high.shape:
            raise ValueError(f"bounds of shapes {self.low.shape} and {self.high.shape}")
        self.shape = self.low.shape

    def __repr__(self) -> str:
        return f"Box(shape={self.shape})"


def flatten_observation(obs: Any, keys: list[str]) -> np.ndarray:
    """The observation dict's entries in ``keys`` order, each raveled, as one float32 vector."""
    missing = [k for k in keys if k not in obs]
    if missing:
        raise ValueError(f"observation lacks {missing}; it has {list(obs)}")
    parts = [np.asarray(obs[k], dtype=np.float32).reshape(-1) for k in keys]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)


class DMCEnv:
    """A dm_control environment with Gymnasium's ``reset``/``step``.

    ``DMCEnv(domain, task, action_repeat=2, seed=0)`` loads the suite task;
    ``DMCEnv(env=some_dm_env, action_repeat=2)`` wraps a loaded one (then ``deepcopy`` is
    not available: give the trainer an ``eval_env``). ``sim_steps`` is the episode's length
    in simulator steps (default: the environment's time limit, 1000 for the standard tasks).
    """

    metadata: dict = {}

    def __init__(
        self,
        domain: Optional[str] = None,
        task: Optional[str] = None,
        *,
        env: Any = None,
        action_repeat: int = 2,
        seed: int = 0,
        sim_steps: Optional[int] = None,
        loader: Optional[Callable[..., Any]] = None,
    ) -> None:
        action_repeat = _count("action_repeat", action_repeat)
        if env is None:
            if domain is None or task is None:
                raise TypeError("DMCEnv needs domain and task, or env=")
            if loader is None:
                from dm_control import suite  # imported here: optional dependency

                loader = suite.load
            env = loader(domain, task, task_kwargs={"random": seed})
        self._domain, self._task, self._loader = domain, task, loader
        self._seed = seed
        self.env = env
        self.action_repeat = action_repeat
        if sim_steps is None:
            # dm_control's control.Environment keeps its time limit in simulator steps here
            # (1000 for the suite's standard tasks); infinite means no limit.
            limit = float(getattr(env, "_step_limit", 1000))
            sim_steps = int(limit) if math.isfinite(limit) else 1000
        self.sim_steps = _count("sim_steps", sim_steps)
        # The suite's time limit counts simulator steps; the agent sees one step per repeat.
        self.episode_len = math.ceil(self.sim_steps / self.action_repeat)
        self.name = f"{domain}-{task}" if domain and task else type(env).__name__
        spec = env.action_spec()
        self.action_space = Box(
            np.broadcast_to(np.asarray(spec.minimum, dtype=np.float32), spec.shape),
            np.broadcast_to(np.asarray(spec.maximum, dtype=np.float32), spec.shape),
        )
        obs_spec = env.observation_spec()
        self._keys = list(obs_spec.keys())
        n = sum(int(np.prod(obs_spec[k].shape, dtype=np.int64)) for k in self._keys)
        self.observation_space = Box(
            np.full(n, -np.inf, dtype=np.float32), np.full(n, np.inf, dtype=np.float32)
        )
        self._t = 0

    def reset(self, *, seed: Optional[int] = None, options: Any = None) -> tuple[np.ndarray, dict]:
        """Start an episode; with ``seed``, the task's random state is reseeded first."""
        if seed is not None:
            try:
                seed = operator.index(seed)
            except TypeError:
                raise TypeError(f"seed must be an integer or None, got {seed!r}") from None
            random = getattr(getattr(self.env, "task", None), "random", None)
            if random is None:
                raise TypeError("this dm_control environment has no task.random to seed")
            random.seed(seed % (2**32))
        self._t = 0
        ts = self.env.reset()
        return flatten_observation(ts.observation, self._keys), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        """Hold ``action`` (clipped to the spec's bounds) for ``action_repeat`` simulator steps."""
        a = np.asarray(action, dtype=np.float64).reshape(self.action_space.shape)
        if not np.all(np.isfinite(a)):
            raise ValueError(f"action {a} is not finite")
        a = np.clip(a, self.action_space.low, self.action_space.high)
        reward = 0.0
        ts = None
        for _ in range(self.action_repeat):
            ts = self.env.step(a)
            reward += float(ts.reward or 0.0)
            self._t += 1
            if ts.last():
                break
        assert ts is not None
        last = bool(ts.last()) or self._t >= self.sim_steps
        # DMC ends episodes by time limit; a last step with discount 0 is a real termination.
        terminated = bool(ts.last()) and ts.discount is not None and float(ts.discount) == 0.0
        truncated = last and not terminated
        return flatten_observation(ts.observation, self._keys), reward, terminated, truncated, {}

    def __deepcopy__(self, memo: dict) -> "DMCEnv":
        # MuJoCo's physics is not deep-copied: a second instance of the task is loaded.
        if self._loader is None or self._domain is None or self._task is None:
            raise TypeError(
                "a DMCEnv built around a loaded environment cannot be copied; pass eval_env="
            )
        return DMCEnv(
            self._domain,
            self._task,
            action_repeat=self.action_repeat,
            seed=self._seed + 1,
            sim_steps=self.sim_steps,
            loader=self._loader,
        )

    def __repr__(self) -> str:
        return f"DMCEnv({self.name!r}, action_repeat={self.action_repeat})"
