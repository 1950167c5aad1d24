"""What every planner shares: the rollout and objective protocols, chunked scoring, the result.

A planner searches over action sequences ``[B, H, Aw]`` for B episodes at once. It sees the
world only through ``rollout_fn(actions [B, S, H, Aw]) -> Prediction`` (S candidates per
episode) and an ``Objective(pred, goal, actions) -> cost [B, S]``; it never touches the
real environment. Actions live in the box [-1, 1]: every candidate is clamped before it is
scored, so the returned plan always respects the bounds.

A planner action packs ``frameskip`` env actions (``Aw = frameskip * A``). ``plan`` unpacks
them: ``search`` works in env time, on actions [B, T, A] with ``T = H * frameskip`` (rollouts
and objectives still get planner actions), so samplers can correlate noise over env steps.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import torch
from torch import Tensor

# latents [B, S, H, C, h, w]; proprio [B, S, H, P] or None
Prediction = dict[str, Tensor | None]
# latents [B, C, h, w]; proprio [B, P] or None
Goal = dict[str, Tensor | None]
RolloutFn = Callable[[Tensor], Prediction]
# One generator for the whole batch, or one per episode: then every draw of episode b comes
# from its own stream, and its plan does not depend on the other episodes in the batch.
Generators = torch.Generator | Sequence[torch.Generator]

ACTION_LOW, ACTION_HIGH = -1.0, 1.0


class Objective(Protocol):
    def __call__(self, pred: Prediction, goal: Goal, actions: Tensor) -> Tensor:
        """Cost [B, S] (lower is better) of candidates ``actions`` [B, S, H, Aw]."""
        ...


@dataclass
class PlanResult:
    actions: Tensor  # [B, H, Aw], inside [-1, 1]
    cost: Tensor  # [B], the objective at ``actions``


def per_episode(draw: Callable[[tuple[int, ...], torch.Generator], Tensor], shape: tuple[int, ...],
                generator: Generators, device: torch.device) -> Tensor:
    """``draw(shape, generator)`` [B, ...] at once, or per episode from its own generator.

    Draws happen on the generator's device and then move, so the same seed gives the same
    plan on any device.
    """
    if isinstance(generator, torch.Generator):
        return draw(shape, generator).to(device)
    if len(generator) != shape[0]:
        raise ValueError(f"need one generator per episode ({shape[0]}), got {len(generator)}")
    return torch.stack([draw(shape[1:], g) for g in generator]).to(device)


def randn(shape: tuple[int, ...], generator: Generators, device: torch.device) -> Tensor:
    return per_episode(lambda s, g: torch.randn(s, generator=g, device=g.device), shape, generator, device)


def colored_noise(shape: tuple[int, ...], beta: float, generator: Generators, device: torch.device) -> Tensor:
    """Unit-variance Gaussian noise [B, S, T, A] with power spectrum ~ 1/f^beta over env time T.

    ``beta = 0`` is white noise; larger ``beta`` correlates successive env actions (iCEM,
    Pinneri et al. 2020), so samples move far in one direction instead of jittering in place.
    Each frequency gets a complex N(0, 1) coefficient scaled by ``f^(-beta/2)`` and the signal
    is divided by its exact standard deviation.
    """
    if beta == 0:
        return randn(shape, generator, device)
    *lead, T, A = shape
    f = torch.fft.rfftfreq(T, dtype=torch.float64)  # [F]
    f[0] = f[1] if T > 1 else 1.0  # the DC term gets the lowest frequency's power
    scale = f ** (-beta / 2)  # [F]
    re, im = randn((*lead, A, len(f), 2), generator, torch.device("cpu")).double().unbind(-1)
    im[..., 0] = 0.0  # DC (and Nyquist, for even T) are real for a real signal
    if T % 2 == 0:
        im[..., -1] = 0.0
    signal = torch.fft.irfft(torch.complex(re, im) * scale, n=T)  # [*lead, A, T]
    # Var(x_t) = (s_0^2 + 4 sum_mid s_k^2 + s_N^2) / T^2, with s_N only for even T
    edges = scale[0] ** 2 + (scale[-1] ** 2 if T % 2 == 0 else 0.0)
    mid = scale[1:-1] if T % 2 == 0 else scale[1:]
    std = (edges + 4 * (mid**2).sum()).sqrt() / T
    return (signal / std).float().transpose(-1, -2).contiguous().to(device)  # [*lead, T, A]


def uniform_actions(shape: tuple[int, ...], generator: Generators, device: torch.device) -> Tensor:
    u = per_episode(lambda s, g: torch.rand(s, generator=g, device=g.device), shape, generator, device)
    return ACTION_LOW + (ACTION_HIGH - ACTION_LOW) * u


def warm_started_candidates(init: Tensor, n: int, generator: Generators) -> Tensor:
    """``n`` uniform candidates per episode [B, n, T, A] whose first is the warm start ``init``
    [B, T, A], so replanning never discards a plan that still scores best."""
    B, T, A = init.shape
    candidates = uniform_actions((B, n, T, A), generator, init.device)
    candidates[:, 0] = init
    return candidates


class Planner(ABC):
    """Base planner. ``max_batch`` bounds the candidates (B x S) scored per rollout call."""

    def __init__(self, max_batch: int):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.max_batch = max_batch

    def plan(
        self,
        rollout_fn: RolloutFn,
        objective: Objective,
        goal: Goal,
        batch_size: int,
        horizon: int,
        action_dim: int,
        init: Tensor | None = None,
        generator: Generators | None = None,
        frameskip: int = 1,
    ) -> PlanResult:
        """Best action sequences [B, H, Aw] found for ``goal``; ``init`` [B, H, Aw] warm-starts.

        ``frameskip``: env actions packed in one planner action (``Aw = frameskip * A``); the
        search runs over the unpacked env actions. ``generator``: one for the batch, or one
        per episode (a list of B), which makes each episode's search independent of the
        others. Without one the search is seeded 0, so an unseeded call is still reproducible.
        """
        check_plan_args(goal, batch_size, horizon, action_dim, init)
        if frameskip < 1 or action_dim % frameskip:
            raise ValueError(f"frameskip must be >= 1 and divide action_dim={action_dim}, got {frameskip}")
        device = goal["latents"].device
        shape = (batch_size, horizon, action_dim)
        init = torch.zeros(shape, device=device) if init is None else init.detach().float().to(device)
        generator = generator if generator is not None else torch.Generator().manual_seed(0)
        if not isinstance(generator, torch.Generator) and len(generator) != batch_size:
            raise ValueError(f"need one generator per episode ({batch_size}), got {len(generator)}")

        def packed(actions: Tensor) -> Tensor:  # env actions [..., T, A] -> planner actions [..., H, Aw]
            return actions.reshape(*actions.shape[:-2], horizon, action_dim)

        result = self.search(
            lambda actions: rollout_fn(packed(actions)),
            lambda pred, target, actions: objective(pred, target, packed(actions)),
            goal,
            init.clamp(ACTION_LOW, ACTION_HIGH).reshape(batch_size, horizon * frameskip, action_dim // frameskip),
            generator,
        )
        return PlanResult(actions=packed(result.actions), cost=result.cost)

    @abstractmethod
    def search(
        self, rollout_fn: RolloutFn, objective: Objective, goal: Goal, init: Tensor, generator: Generators
    ) -> PlanResult:
        """The planner's search over env actions from ``init`` [B, T, A] (the warm start, zeros
        without one); ``rollout_fn`` and ``objective`` take candidates [B, S, T, A]."""

    def score(
        self, rollout_fn: RolloutFn, objective: Objective, goal: Goal, actions: Tensor, backward: bool = False
    ) -> Tensor:
        """Cost [B, S] of candidates ``actions`` [B, S, T, A], scored in chunks of S.

        With ``backward`` the graph of each chunk is back-propagated and freed at once, so
        d(sum of costs)/d(actions) accumulates in the leaf's ``.grad`` with bounded memory
        (costs of different candidates are independent, so chunking does not change it).
        """
        B, S = actions.shape[:2]
        chunk = max(1, self.max_batch // B)
        costs = []
        for start in range(0, S, chunk):
            part = actions[:, start : start + chunk]
            with torch.set_grad_enabled(backward):
                cost = objective(rollout_fn(part), goal, part)
                check_cost(cost, part.shape[:2])
                if backward:
                    if not cost.requires_grad:
                        raise ValueError("cost has no gradient w.r.t. the actions: is rollout_fn differentiable?")
                    cost.sum().backward()
            costs.append(cost.detach())
        return torch.cat(costs, dim=1)

    def result(self, rollout_fn: RolloutFn, objective: Objective, goal: Goal, actions: Tensor) -> PlanResult:
        """Package a final plan [B, T, A] with its cost (one extra rollout of one candidate)."""
        actions = actions.detach().clamp(ACTION_LOW, ACTION_HIGH)
        cost = self.score(rollout_fn, objective, goal, actions[:, None])[:, 0]
        return PlanResult(actions=actions, cost=cost)


def best_of(candidates: Tensor, costs: Tensor) -> tuple[Tensor, Tensor]:
    """The cheapest of ``candidates`` [B, S, T, A] per episode: (actions [B, T, A], cost [B])."""
    cost, idx = costs.min(dim=1)  # [B]
    idx = idx[:, None, None, None].expand(-1, 1, *candidates.shape[2:])  # [B, 1, T, A]
    return candidates.gather(1, idx)[:, 0], cost


def check_cost(cost: Tensor, shape: tuple[int, ...]) -> None:
    if tuple(cost.shape) != tuple(shape):
        raise ValueError(f"objective returned cost of shape {tuple(cost.shape)}, expected {tuple(shape)}")
    if not torch.isfinite(cost).all():
        bad = (~torch.isfinite(cost)).sum().item()
        raise ValueError(f"objective returned {bad} NaN/inf costs: did the rollout diverge?")


def check_plan_args(goal: Goal, batch_size: int, horizon: int, action_dim: int, init: Tensor | None) -> None:
    if batch_size < 1 or horizon < 1 or action_dim < 1:
        raise ValueError(f"batch_size, horizon, action_dim must be >= 1, got {batch_size}, {horizon}, {action_dim}")
    if goal.get("latents") is None or goal["latents"].shape[0] != batch_size:
        got = None if goal.get("latents") is None else tuple(goal["latents"].shape)
        raise ValueError(f"goal['latents'] must be [B={batch_size}, C, h, w], got {got}")
    if init is not None:
        if tuple(init.shape) != (batch_size, horizon, action_dim):
            raise ValueError(f"init must be [{batch_size}, {horizon}, {action_dim}], got {tuple(init.shape)}")
        if not torch.isfinite(init).all():
            raise ValueError("init contains NaN or inf")


class GaussianPlanner(Planner):
    """Iterative search in a diagonal Gaussian over plans: sample, score, refit (CEM, MPPI).

    Each iteration draws ``num_samples`` candidates around ``mean`` (candidate 0 is the mean
    itself, so a good warm start is never lost), clamps them into the action box, scores
    them and lets the subclass refit ``(mean, std)``. The plan is the final mean.
    ``noise_beta`` colours the sampling noise over env time (see ``colored_noise``).
    ``scale_sigma`` makes the sigma per env-action dimension (e.g. in units of the data's std).
    """

    def __init__(self, num_samples: int, iterations: int, init_sigma: float, max_batch: int, noise_beta: float = 0.0):
        super().__init__(max_batch)
        if num_samples < 2 or iterations < 1 or not init_sigma > 0 or not 0 <= noise_beta < math.inf:
            raise ValueError(
                f"need num_samples >= 2, iterations >= 1, init_sigma > 0, noise_beta finite and >= 0; "
                f"got {num_samples}, {iterations}, {init_sigma}, {noise_beta}"
            )
        self.num_samples, self.iterations, self.init_sigma = num_samples, iterations, init_sigma
        self.noise_beta = noise_beta
        self.sigma_scale: Tensor | None = None  # [A], set by scale_sigma

    def scale_sigma(self, scale: Sequence[float]) -> None:
        """Sample at ``init_sigma * scale[a]`` in env-action dimension ``a`` instead of
        ``init_sigma`` in all: ``scale`` [A] is e.g. the training actions' std, as DINO-WM samples
        in actions normalised by its dataset's statistics."""
        scale = torch.as_tensor(scale, dtype=torch.float32).flatten()
        if len(scale) == 0 or not (torch.isfinite(scale).all() and (scale > 0).all()):
            raise ValueError(f"sigma scale must be finite and > 0 in every action dimension, got {scale.tolist()}")
        self.sigma_scale = scale

    def sigma(self, like: Tensor) -> Tensor:
        """The initial (CEM) or fixed (MPPI) std of plans shaped like ``like`` [B, T, A]."""
        std = torch.full_like(like, self.init_sigma)
        if self.sigma_scale is None:
            return std
        if len(self.sigma_scale) != like.shape[-1]:
            raise ValueError(f"the sigma scale has {len(self.sigma_scale)} dimensions, the env's actions {like.shape[-1]}")
        return std * self.sigma_scale.to(like)

    @abstractmethod
    def update(self, samples: Tensor, costs: Tensor) -> tuple[Tensor, Tensor]:
        """New (mean, std) [B, T, A] from ``samples`` [B, S, T, A] and their ``costs`` [B, S]."""

    def search(self, rollout_fn, objective, goal, init, generator):
        B, T, A = init.shape
        mean, std = init, self.sigma(init)
        for _ in range(self.iterations):
            noise = colored_noise((B, self.num_samples, T, A), self.noise_beta, generator, init.device)
            samples = mean[:, None] + std[:, None] * noise  # [B, S, T, A]
            samples[:, 0] = mean
            samples = samples.clamp(ACTION_LOW, ACTION_HIGH)
            costs = self.score(rollout_fn, objective, goal, samples)  # [B, S]
            mean, std = self.update(samples, costs)
        return self.result(rollout_fn, objective, goal, mean)
