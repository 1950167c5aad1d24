"""Action repeat for planners: one planner action = ``k`` env actions concatenated."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np


class FrameSkip(gym.Wrapper):
    """Run ``k`` inner steps per step; the action is the ``k`` env actions stacked.

    The action space is ``Box(-1, 1, (k * A,))``: ``action.reshape(k, A)[i]`` drives inner
    step ``i``. ``step`` returns the last observation, the summed reward and
    ``info["states"]`` ``[k', S]`` (the state after each inner step, ``k' <= k`` when the
    episode ends early). The goal API stays on the inner env (``env.unwrapped``).
    """

    def __init__(self, env: gym.Env, k: int):
        super().__init__(env)
        if int(k) != k or k < 1:
            raise ValueError(f"FrameSkip: k must be a positive integer, got {k!r}")
        inner = env.action_space
        if not isinstance(inner, gym.spaces.Box) or len(inner.shape) != 1:
            raise ValueError(f"FrameSkip: needs a 1-D Box action space, got {inner}")
        self.k = int(k)
        self.inner_action_dim = inner.shape[0]
        self.action_space = gym.spaces.Box(
            low=np.tile(inner.low, self.k), high=np.tile(inner.high, self.k), dtype=inner.dtype
        )

    def step(self, action: Any):
        actions = self._split(action)  # [k, A]
        total_reward, states = 0.0, []
        for a in actions:
            obs, reward, terminated, truncated, info = self.env.step(a)
            total_reward += float(reward)
            states.append(info["state"])
            if terminated or truncated:
                break
        info = dict(info, states=np.stack(states))  # [k', S]
        return obs, total_reward, terminated, truncated, info

    def _split(self, action: Any) -> np.ndarray:
        """Validate a stacked action [k * A] and reshape it to [k, A]."""
        a = np.asarray(action, dtype=np.float64)
        if a.shape != self.action_space.shape:
            raise ValueError(
                f"FrameSkip: action has shape {a.shape}, expected {self.action_space.shape} "
                f"(k={self.k} env actions of dimension {self.inner_action_dim})"
            )
        if not np.all(np.isfinite(a)):
            raise ValueError(f"FrameSkip: action contains NaN or inf: {a}")
        return a.reshape(self.k, self.inner_action_dim)
