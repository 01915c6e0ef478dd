"""A tiny stand-in for a dm_control suite environment (dm_env's TimeStep API), so the
adapter and the trainer's Python-environment path are tested without MuJoCo."""

from collections import OrderedDict
from types import SimpleNamespace
from typing import Any, NamedTuple

import numpy as np


class TimeStep(NamedTuple):
    step_type: int
    reward: Any
    discount: Any
    observation: Any

    def last(self) -> bool:
        return self.step_type == 2


class PointMass:
    """x'' = 2 u on a line, reward 1 - |x - 0.5| (clipped at 0) per simulator step, a time
    limit of `limit` simulator steps; observations position [1], velocity [1] and a 2x2
    `grid` of derived values, to check the flattening order."""

    def __init__(self, seed: int = 0, limit: int = 20) -> None:
        self.task = SimpleNamespace(random=np.random.RandomState(seed))
        self.limit = limit
        self._step_limit = float(limit)  # where dm_control's Environment keeps it
        self.sim_steps = 0  # every simulator step ever taken
        self.actions: list = []

    def action_spec(self):
        return SimpleNamespace(shape=(1,), minimum=np.array([-1.0]), maximum=np.array([1.0]))

    def observation_spec(self):
        return OrderedDict(
            position=SimpleNamespace(shape=(1,)),
            velocity=SimpleNamespace(shape=(1,)),
            grid=SimpleNamespace(shape=(2, 2)),
        )

    def _obs(self):
        return OrderedDict(
            position=np.array([self.x]),
            velocity=np.array([self.v]),
            grid=np.array([[self.x, -self.x], [self.v, self.t]]),
        )

    def reset(self) -> TimeStep:
        self.x = float(self.task.random.uniform(-1.0, 1.0))
        self.v = 0.0
        self.t = 0
        return TimeStep(0, None, None, self._obs())

    def step(self, action) -> TimeStep:
        a = float(np.asarray(action).reshape(-1)[0])
        self.actions.append(a)
        self.v += 0.05 * 2.0 * a
        self.x += 0.05 * self.v
        self.t += 1
        self.sim_steps += 1
        reward = max(0.0, 1.0 - abs(self.x - 0.5))
        return TimeStep(2 if self.t >= self.limit else 1, reward, 1.0, self._obs())


def loader(domain: str, task: str, task_kwargs=None) -> PointMass:
    """`dm_control.suite.load`'s signature."""
    assert (domain, task) == ("point", "reach")
    return PointMass(seed=(task_kwargs or {}).get("random", 0))
