"""Data-collection policies: what drives an env while a dataset is recorded.

A policy is built per episode by ``make_policy(name, env, rng)`` with its own
``numpy.random.Generator``, so an episode's actions depend on that generator alone.
``policy.reset(obs, info)`` starts an episode, ``policy(obs, info)`` returns the next env
action ``float32 [A]``. Policies read the true state from ``info["state"]``.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

import gymnasium as gym
import numpy as np


class Policy(Protocol):
    def reset(self, obs: dict, info: dict) -> None: ...

    def __call__(self, obs: dict, info: dict) -> np.ndarray: ...


class RandomPolicy:
    """Uniform actions over the action box (DINO-WM's random data for Wall, Maze, Rope, Granular)."""

    def __init__(self, env: gym.Env, rng: np.random.Generator):
        self.low, self.high = env.action_space.low, env.action_space.high
        self.rng = rng

    def reset(self, obs: dict, info: dict) -> None:
        pass

    def __call__(self, obs: dict, info: dict) -> np.ndarray:
        return self.rng.uniform(self.low, self.high).astype(np.float32)


class StickyRandomPolicy(RandomPolicy):
    """Uniform actions, each held for a geometric number of steps (mean ``hold``).

    Uniform i.i.d. actions make the Wall dot random-walk (5% of 50-step episodes from the
    env's reset states cross the door), while a planner's plans move it straight and fast
    into walls and through the door. Held actions cover that regime (hold 5: 14% cross).
    """

    def __init__(self, env: gym.Env, rng: np.random.Generator, hold: float = 5.0):
        if not hold >= 1.0:
            raise ValueError(f"sticky_random: hold is the mean steps an action is held, >= 1; got {hold}")
        super().__init__(env, rng)
        self.switch = 1.0 / hold
        self.action = super().__call__(None, {})

    def reset(self, obs: dict, info: dict) -> None:
        self.action = super().__call__(obs, info)

    def __call__(self, obs: dict, info: dict) -> np.ndarray:
        if self.rng.random() < self.switch:
            self.action = super().__call__(obs, info)
        return self.action.copy()


class PusherPolicy:
    """PushT: the env module's scripted noisy pusher, which keeps the T block moving.

    Keyword arguments (e.g. ``noise``) go to ``wmplan.envs.pusht.Pusher``.
    """

    def __init__(self, env: gym.Env, rng: np.random.Generator, **kwargs: Any):
        from wmplan.envs import pusht

        _require(env, pusht.PushTEnv, "pusher")
        self.rng, self.kwargs = rng, kwargs
        self.pusher = pusht.Pusher(rng, **kwargs)

    def reset(self, obs: dict, info: dict) -> None:
        self.pusher = type(self.pusher)(self.rng, **self.kwargs)  # a fresh push target

    def __call__(self, obs: dict, info: dict) -> np.ndarray:
        return np.asarray(self.pusher(info["state"]), dtype=np.float32)


class WaypointPolicy:
    """PointMaze: follow the maze's shortest path to a random free cell, then pick another.

    Gaussian action noise (std ``noise``) keeps the recorded actions diverse, so a world
    model sees more than the controller's saturated pushes.
    """

    def __init__(self, env: gym.Env, rng: np.random.Generator, noise: float = 0.3, reach: float = 0.3):
        from wmplan.envs.pointmaze import PointMazeEnv

        self.maze = _require(env, PointMazeEnv, "waypoint")
        self.cells = np.argwhere(self.maze.grid).astype(np.float64)  # free cell centres [N, 2]
        self.rng, self.noise, self.reach = rng, noise, reach
        self.target = self.cells[0]

    def reset(self, obs: dict, info: dict) -> None:
        self._new_target(info["state"])

    def __call__(self, obs: dict, info: dict) -> np.ndarray:
        state = info["state"]
        if np.linalg.norm(state[:2] - self.target) < self.reach:
            self._new_target(state)
        action = self.maze.waypoint_action(state, self.target)
        action = action + self.noise * self.rng.standard_normal(action.shape)
        return np.clip(action, -1.0, 1.0).astype(np.float32)

    def _new_target(self, state: np.ndarray) -> None:
        # Any free cell except the one we are in, so the ball always has somewhere to go.
        far = np.linalg.norm(self.cells - state[:2], axis=1) >= self.reach
        candidates = self.cells[far] if far.any() else self.cells
        self.target = candidates[self.rng.integers(len(candidates))]


POLICIES: dict[str, Callable[..., Policy]] = {
    "random": RandomPolicy,
    "sticky_random": StickyRandomPolicy,
    "pusher": PusherPolicy,
    "waypoint": WaypointPolicy,
}


def make_policy(name: str, env: gym.Env, rng: np.random.Generator, **kwargs: Any) -> Policy:
    """Build policy ``name`` for ``env`` (a raw or gym.make-wrapped wmplan env)."""
    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r}; known: {sorted(POLICIES)}")
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    return POLICIES[name](env, rng, **kwargs)


def _require(env: gym.Env, cls: type, policy: str):
    """The unwrapped env if it is a ``cls``, else a clear error."""
    inner = env.unwrapped
    if not isinstance(inner, cls):
        raise ValueError(f"policy {policy!r} needs a {cls.__name__}, got {type(inner).__name__}")
    return inner
