"""The true simulator as a world model: the upper-bound baseline for the MPC harness.

``OracleModel(env)`` stands in for a world model: its "latents" are simulator states
``[state_dim, 1, 1]`` and its rollout is ``env.simulate`` (true dynamics, no rendering).
Pair it with ``EnvDistance(env)``, the env's own cost (its ``planning_cost`` or ``evaluate``
distance), and the planner searches with a perfect model and a perfect cost: what planning
alone can reach.
``OracleModel(env, render=True)`` is a perfect *pixel* model instead (latents are the rendered
frames, float [3, H, W] in [0, 1]): it isolates an image objective's quality from model error.

Cost: the GoalEnv API simulates one state at a time, so a replan runs
``B x (iterations x num_samples + 1) x horizon x frameskip`` physics steps in Python, plus one
``evaluate`` per candidate. CEM 300 x 30, horizon 5, frameskip 5 is 225k steps per episode
per replan; at ~10 us a step (numpy dynamics) that is ~2-3 s, at ~100 us (pymunk) ~25 s.
Measured: WallEnv simulates at ~23 us a step, so CEM 300 x 30 costs ~5 s per episode per
replan, ``cem`` (64 x 5) ~0.2 s; PushT (pymunk) at ~190 us, ~43 s and ~1.5 s.
``render=True`` adds one render per predicted frame.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from wmplan.planners.base import Goal, Prediction, RolloutFn

if TYPE_CHECKING:
    import gymnasium as gym


class OracleModel:
    """The true dynamics of ``env`` (a GoalEnv, possibly FrameSkip-wrapped) as a world model."""

    def __init__(self, env: gym.Env, render: bool = False):
        self.env = env.unwrapped
        self.action_dim = self.env.action_space.shape[0]
        self.frameskip = env.action_space.shape[0] // self.action_dim
        self.render = render

    def encode(self, obs: dict[str, Any]) -> Goal:
        """Observations with ``state`` [N, state_dim] (and ``pixels`` [N, H, W, 3]) -> latents [N, ...]."""
        if self.render:
            return {"latents": to_latents(torch.as_tensor(np.asarray(obs["pixels"]))), "proprio": None}
        state = torch.as_tensor(np.asarray(obs["state"]), dtype=torch.float64)
        return {"latents": state[:, :, None, None], "proprio": None}

    def make_rollout_fn(self, context: dict[str, Any]) -> RolloutFn:
        """Rollouts from the newest real state; the context must carry ``state`` [B, T, state_dim]."""
        start = np.asarray(context["state"])[:, -1]  # [B, state_dim]
        k = self.frameskip

        def rollout(actions: Tensor) -> Prediction:
            B, S, H, _ = actions.shape
            inner = actions.detach().cpu().double().numpy().reshape(B, S, H * k, self.action_dim)
            # simulate returns [H*k + 1, state_dim] from the start; keep the state after each planner step
            states = np.asarray([[self.env.simulate(start[b], inner[b, s])[k::k] for s in range(S)] for b in range(B)])
            if not self.render:
                return {"latents": torch.from_numpy(states)[..., None, None], "proprio": None}  # [B,S,H,state_dim,1,1]
            images = np.asarray([self.env.render_state(x) for x in states.reshape(B * S * H, -1)])  # [BSH, h, w, 3]
            latents = to_latents(torch.from_numpy(images))
            return {"latents": latents.view(B, S, H, *latents.shape[1:]), "proprio": None}  # [B,S,H,3,h,w]

        return rollout


def to_latents(pixels: Tensor) -> Tensor:
    """uint8 [N, H, W, 3] -> float [N, 3, H, W] in [0, 1]."""
    return pixels.permute(0, 3, 1, 2).float() / 255


class EnvDistance:
    """Cost [B, S] of the last predicted state against the goal state, as the env scores it.

    The env's ``planning_cost(state, goal)`` where it defines one (PushT: its success test's
    errors over their thresholds, the block angle included), else its ``evaluate`` distance.
    """

    def __init__(self, env: gym.Env):
        self.env = env.unwrapped
        self.cost = getattr(self.env, "planning_cost", None) or (lambda s, g: self.env.evaluate(s, g)["distance"])

    def __call__(self, pred: Prediction, goal: Goal, actions: Tensor) -> Tensor:
        if pred["latents"].shape[-3:] != (self.env.state_dim, 1, 1):
            raise ValueError("EnvDistance needs state latents [B,S,H,state_dim,1,1]: use OracleModel(env, render=False)")
        final = pred["latents"][:, :, -1, :, 0, 0].cpu().numpy()  # [B, S, state_dim]
        target = goal["latents"][:, :, 0, 0].cpu().numpy()  # [B, state_dim]
        cost = [[self.cost(s, target[b]) for s in final[b]] for b in range(len(final))]
        return torch.tensor(cost, dtype=torch.float64)
