"""Per-environment protocol: which env, at what resolution, how data is collected and planned.

``wmplan/configs/env/<name>.yaml`` holds exactly the fields of ``EnvConfig``; load one with
``load_env_config(name)`` or, inside Hydra, ``EnvConfig(**cfg.env)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import yaml

import wmplan.envs  # noqa: F401  (registers the wmplan/... ids)
from wmplan.config_dir import config_path

ENV_CONFIG_DIR = config_path("env")


@dataclass(frozen=True)
class EnvConfig:
    name: str  # config name, e.g. "pointmaze_umaze"
    id: str  # registered Gymnasium id, e.g. "wmplan/PointMaze-UMaze-v0"
    frameskip: int  # env steps per planner step (a planner action is frameskip env actions)
    history: int  # context frames the planner conditions on
    episode_length: int  # env steps per collected episode
    dataset_episodes: int  # default number of episodes to collect (DINO-WM's dataset size)
    policy: str  # default data-collection policy (see wmplan.data.policies)
    resolution: int = 64  # image side in pixels
    env_kwargs: dict[str, Any] = field(default_factory=dict)  # extra constructor kwargs

    def __post_init__(self):
        if self.id not in gym.registry:
            raise ValueError(f"env config {self.name!r}: unknown environment id {self.id!r}")
        for key in ("frameskip", "history", "episode_length", "dataset_episodes", "resolution"):
            value = getattr(self, key)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"env config {self.name!r}: {key} must be a positive int, got {value!r}")
        if not isinstance(self.env_kwargs, Mapping):
            raise ValueError(f"env config {self.name!r}: env_kwargs must be a mapping")
        object.__setattr__(self, "env_kwargs", dict(self.env_kwargs))  # a plain dict even from Hydra

    def make(self, **overrides: Any) -> gym.Env:
        """A fresh env at env-step granularity (no frameskip), episodes ``episode_length`` long."""
        kwargs = {"resolution": self.resolution, **self.env_kwargs, **overrides}
        return gym.make(self.id, max_episode_steps=self.episode_length, **kwargs)


def load_env_config(name: str, **overrides: Any) -> EnvConfig:
    """Read ``wmplan/configs/env/<name>.yaml`` into an ``EnvConfig`` (fields in ``overrides`` win)."""
    path = ENV_CONFIG_DIR / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in ENV_CONFIG_DIR.glob("*.yaml"))
        raise ValueError(f"no env config {name!r} in {ENV_CONFIG_DIR}; known: {known}")
    with open(path) as f:
        cfg = yaml.safe_load(f)
    return EnvConfig(**{**cfg, **overrides})
