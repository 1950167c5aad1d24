"""Uniform random plans: random shooting (score many, keep the best) and the chance baseline."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from wmplan.planners.base import (
    Generators, Goal, Objective, PlanResult, Planner, RolloutFn, best_of, uniform_actions, warm_started_candidates,
)


@dataclass
class RandomShootingConfig:
    name: str = "random_shooting"
    num_samples: int = 1000
    max_batch: int = 1024  # candidates (episodes x samples) per rollout call


class RandomShooting(Planner):
    """Candidate 0 is the warm start, so replanning never discards a plan that still scores best."""

    def __init__(self, cfg: RandomShootingConfig):
        super().__init__(cfg.max_batch)
        if cfg.num_samples < 1:
            raise ValueError(f"random shooting needs num_samples >= 1, got {cfg.num_samples}")
        self.num_samples = cfg.num_samples

    def search(
        self, rollout_fn: RolloutFn, objective: Objective, goal: Goal, init: Tensor, generator: Generators
    ) -> PlanResult:
        samples = warm_started_candidates(init, self.num_samples, generator)  # [B, S, T, A]
        actions, cost = best_of(samples, self.score(rollout_fn, objective, goal, samples))
        return PlanResult(actions=actions, cost=cost)


@dataclass
class RandomActionsConfig:
    name: str = "random"


@dataclass
class NoActionsConfig:
    name: str = "noop"


class NoActions(Planner):
    """All-zero plans (hold still; on Rope/Granular a zero-length push, which pushes nothing):
    the do-nothing baseline a planner must beat to have done anything useful."""

    def __init__(self, cfg: NoActionsConfig):  # no knobs: the config only names it
        super().__init__(max_batch=1)

    def search(
        self, rollout_fn: RolloutFn, objective: Objective, goal: Goal, init: Tensor, generator: Generators
    ) -> PlanResult:
        return self.result(rollout_fn, objective, goal, torch.zeros_like(init))


class RandomActions(Planner):
    """Uniform random plans that ignore model and goal: the chance baseline."""

    def __init__(self, cfg: RandomActionsConfig):  # no knobs: the config only names it
        super().__init__(max_batch=1)

    def search(
        self, rollout_fn: RolloutFn, objective: Objective, goal: Goal, init: Tensor, generator: Generators
    ) -> PlanResult:
        actions = uniform_actions(tuple(init.shape), generator, init.device)  # [B, T, A]
        return self.result(rollout_fn, objective, goal, actions)
