"""The goal API shared by every wmplan environment.

Every environment is a Gymnasium env with
- observation: ``{"pixels": uint8 [H, W, 3], "proprio": float32 [P]}``;
- action space ``Box(-1, 1, (A,), float32)``;
- ``info["state"]``: the full simulator state as a flat float64 vector, so it can be
  stored in datasets and handed back to ``set_state``.

``reset(seed=..., options=...)`` takes ``options={"state": s}`` to start from a given
state (otherwise it samples a start from ``sample_start_and_goal``) and
``options={"goal_state": g}`` to make ``step`` report ``success``/``distance`` against g
(reward is then ``-distance`` and the episode terminates on success).

Subclasses implement the goal API (``get_state``, ``set_state``, ``sample_start_and_goal``,
``evaluate``) and three hooks: ``_apply_action`` (physics only), ``_render`` (image of the
current state) and ``_proprio``. The base class owns validation, ``step``, ``reset``,
``render_state`` and the render-free ``simulate`` used by oracle planners.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

import gymnasium as gym
import numpy as np


class GoalEnv(gym.Env):
    """Base class: action validation, state-based reset and the goal API."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}
    state_dim: int
    proprio_dim: int

    def __init__(self, resolution: int = 64, render_mode: str | None = "rgb_array"):
        if not 8 <= int(resolution) <= 1024:
            raise ValueError(f"resolution must be in [8, 1024] pixels, got {resolution}")
        self.resolution = int(resolution)
        self.render_mode = render_mode
        self._goal: np.ndarray | None = None

    # -- goal API (subclasses) ----------------------------------------------------
    @abstractmethod
    def get_state(self) -> np.ndarray:
        """Full simulator state as a flat float64 vector (exact round trip)."""

    @abstractmethod
    def set_state(self, state: np.ndarray) -> None:
        """Restore a state returned by ``get_state``."""

    @abstractmethod
    def sample_start_and_goal(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Draw (start_state, goal_state) from the evaluation protocol's distribution."""

    @abstractmethod
    def evaluate(self, state: np.ndarray, goal_state: np.ndarray) -> dict[str, Any]:
        """The environment's own success rule: ``{"success": bool, "distance": float}``."""

    # -- pose probe (optional) ------------------------------------------------------
    # Sizes of consecutive runs of pose features that share one unit and one normalising scale
    # for the probe's loss (their RMS std); None: each feature is scaled by its own std.
    pose_groups: tuple[int, ...] | None = None

    def pose_features(self, states: np.ndarray) -> np.ndarray:
        """States ``[..., state_dim]`` -> pose features float64 ``[..., F]``: what one frame shows
        and success needs, the targets of a pose probe on learned latents (JEPA ``model.probe_dim``)."""
        raise NotImplementedError(f"{type(self).__name__} defines no pose features: a pose probe needs an env "
                                  "that does (PushT, Rope, Granular)")

    def pose_cost(self, features: Any, goal: Any) -> Any:
        """Planning cost ``[...]`` of pose features ``[..., F]`` against the goal's (numpy arrays or
        torch tensors, broadcasting), for the ``pose_weight`` objective term."""
        raise NotImplementedError(f"{type(self).__name__} defines no pose cost: use an objective with pose_weight: 0")

    def pose_from_proprio(self, pose: Any, proprio: Any) -> Any:
        """Pose features ``[..., F]`` (torch) with those the raw proprio ``[..., P]`` carries
        exactly taken from it: a probe reads them from pixels only approximately. None here."""
        return pose

    # -- hooks (subclasses) -------------------------------------------------------
    @abstractmethod
    def _apply_action(self, action: np.ndarray) -> None:
        """Advance the physics by one env step under a validated, clipped action."""

    @abstractmethod
    def _render(self) -> np.ndarray:
        """Image uint8 [resolution, resolution, 3] of the current state."""

    @abstractmethod
    def _proprio(self) -> np.ndarray:
        """Proprioceptive vector float32 [proprio_dim] of the current state."""

    # -- shared machinery ---------------------------------------------------------
    def render_state(self, state: np.ndarray) -> np.ndarray:
        """Image uint8 [H, W, 3] of ``state``; leaves the current state unchanged."""
        saved = self.get_state()
        self.set_state(state)
        image = self._render()
        self.set_state(saved)
        return image

    def render(self) -> np.ndarray:
        return self._render()

    def simulate(self, state: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """Roll the true dynamics from ``state`` under ``actions`` [N, A] without rendering.

        Returns the visited states [N + 1, state_dim]; the env's current state is kept.
        """
        saved = self.get_state()
        self.set_state(state)
        states = [self.get_state()]
        for a in np.asarray(actions):
            self._apply_action(self._check_action(a))
            states.append(self.get_state())
        self.set_state(saved)
        return np.stack(states)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        options = options or {}
        start = options.get("state")
        if start is None:
            start, _ = self.sample_start_and_goal(self.np_random)
        self.set_state(start)
        goal = options.get("goal_state")
        self._goal = None if goal is None else self._check_state(goal)
        return self._observation(), self._info()

    def step(self, action: Any):
        self._apply_action(self._check_action(action))
        info = self._info()
        reward, terminated = 0.0, False
        if self._goal is not None:
            reward, terminated = -float(info["distance"]), bool(info["success"])
        return self._observation(), reward, terminated, False, info

    def _observation(self) -> dict[str, np.ndarray]:
        return {"pixels": self._render(), "proprio": self._proprio().astype(np.float32)}

    def _info(self) -> dict[str, Any]:
        info: dict[str, Any] = {"state": self.get_state()}
        if self._goal is not None:
            info.update(self.evaluate(info["state"], self._goal))
        return info

    def _check_action(self, action: Any) -> np.ndarray:
        """Validate an action (shape, finiteness) and clip it into the action box."""
        a = np.asarray(action, dtype=np.float64)
        shape = self.action_space.shape
        if a.shape != shape:
            raise ValueError(f"{type(self).__name__}: action has shape {a.shape}, expected {shape}")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{type(self).__name__}: action contains NaN or inf: {a}")
        return np.clip(a, self.action_space.low, self.action_space.high)

    def _check_state(self, state: Any) -> np.ndarray:
        """Validate a state vector of length ``state_dim``."""
        s = np.asarray(state, dtype=np.float64)
        if s.shape != (self.state_dim,):
            raise ValueError(
                f"{type(self).__name__}: state has shape {s.shape}, expected ({self.state_dim},)"
            )
        if not np.all(np.isfinite(s)):
            raise ValueError(f"{type(self).__name__}: state contains NaN or inf")
        return s
