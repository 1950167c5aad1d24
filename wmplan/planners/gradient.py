"""Gradient planning: Adam on the actions through a differentiable rollout, with restarts."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from wmplan.planners.base import (
    ACTION_HIGH,
    ACTION_LOW,
    Generators,
    Goal,
    Objective,
    PlanResult,
    Planner,
    RolloutFn,
    best_of,
    warm_started_candidates,
)


@dataclass
class GradientConfig:
    name: str = "gradient"
    restarts: int = 8  # restart 0 starts from the warm start, the others uniformly in the box
    iterations: int = 100
    lr: float = 0.1  # Adam step size, in action units (the box is [-1, 1])
    max_batch: int = 1024  # candidates (episodes x restarts) per rollout call


class GradientPlanner(Planner):
    """Projected Adam: after every step the actions are clamped back into [-1, 1].

    All restarts of all episodes are optimised as one batch; Adam is elementwise, so they
    do not interact. The plan is the cheapest iterate seen, over restarts and iterations.
    """

    def __init__(self, cfg: GradientConfig):
        super().__init__(cfg.max_batch)
        if cfg.restarts < 1 or cfg.iterations < 1 or cfg.lr <= 0:
            raise ValueError(
                f"gradient planner needs restarts >= 1, iterations >= 1, lr > 0; "
                f"got {cfg.restarts}, {cfg.iterations}, {cfg.lr}"
            )
        self.restarts, self.iterations, self.lr = cfg.restarts, cfg.iterations, cfg.lr

    def search(
        self, rollout_fn: RolloutFn, objective: Objective, goal: Goal, init: Tensor, generator: Generators
    ) -> PlanResult:
        actions = warm_started_candidates(init, self.restarts, generator).requires_grad_(True)  # [B, R, T, A]
        optimizer = torch.optim.Adam([actions], lr=self.lr)
        best_actions, best_cost = init, torch.full(init.shape[:1], float("inf"), device=init.device)
        for step in range(self.iterations + 1):
            optimizer.zero_grad(set_to_none=True)
            last = step == self.iterations  # the final iterate is scored but not stepped
            costs = self.score(rollout_fn, objective, goal, actions, backward=not last)  # [B, R]
            cand_actions, cand_cost = best_of(actions.detach(), costs)
            better = cand_cost < best_cost
            best_actions = torch.where(better[:, None, None], cand_actions, best_actions)
            best_cost = torch.where(better, cand_cost, best_cost)
            if not last:
                optimizer.step()
                with torch.no_grad():
                    actions.clamp_(ACTION_LOW, ACTION_HIGH)
        return PlanResult(actions=best_actions.clone(), cost=best_cost)
