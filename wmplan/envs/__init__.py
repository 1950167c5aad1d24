"""Gymnasium environments of the DINO-WM suite, re-implemented on pymunk and MuJoCo.

Importing this package registers the ``wmplan/...`` ids with Gymnasium.
"""

from __future__ import annotations

import gymnasium as gym

from wmplan.envs.base import GoalEnv
from wmplan.envs.wrappers import FrameSkip

# id -> (entry point, constructor kwargs, max_episode_steps)
ENV_IDS: dict[str, tuple[str, dict, int]] = {
    "wmplan/PushT-v0": ("wmplan.envs.pusht:PushTEnv", {}, 300),
    "wmplan/PointMaze-UMaze-v0": ("wmplan.envs.pointmaze:PointMazeEnv", {"maze": "umaze"}, 300),
    "wmplan/PointMaze-Medium-v0": ("wmplan.envs.pointmaze:PointMazeEnv", {"maze": "medium"}, 600),
    "wmplan/PointMaze-Large-v0": ("wmplan.envs.pointmaze:PointMazeEnv", {"maze": "large"}, 800),
    "wmplan/Wall-v0": ("wmplan.envs.wall:WallEnv", {}, 100),
    "wmplan/Rope-v0": ("wmplan.envs.deformable:RopeEnv", {}, 50),
    "wmplan/Granular-v0": ("wmplan.envs.deformable:GranularEnv", {}, 50),
}

for _id, (_entry, _kwargs, _steps) in ENV_IDS.items():
    if _id not in gym.registry:
        gym.register(id=_id, entry_point=_entry, kwargs=_kwargs, max_episode_steps=_steps)


def make(env_id: str, frameskip: int = 1, **kwargs) -> gym.Env:
    """``gym.make`` a wmplan env, optionally wrapped in ``FrameSkip(frameskip)``."""
    if env_id not in ENV_IDS:
        raise ValueError(f"unknown environment {env_id!r}; known: {sorted(ENV_IDS)}")
    env = gym.make(env_id, **kwargs)
    return FrameSkip(env, frameskip) if frameskip > 1 else env


__all__ = ["ENV_IDS", "FrameSkip", "GoalEnv", "make"]
