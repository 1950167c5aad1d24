"""Planning objectives: cost [B, S] of predicted rollouts against a goal, as a weighted sum of terms.

Terms (each ``term(pred, goal, actions) -> [B, S]``):
- ``LatentDistance``: MSE, variance-normalised MSE or cosine distance between predicted
  latents and the goal latent, on the last frame, all frames or custom per-frame weights,
  optionally averaged over several *views* of both (average-pool pyramid levels, Gaussian
  blurs). A plain distance in pixel or VAE-latent space goes flat once the object no longer
  overlaps its goal; blurred views overlap again and keep a slope (docs/REFERENCE.md §1). Measured with a
  perfect pixel model on Wall (hard goals, CEM 64 x 5, 10 episodes): last-frame pixel MSE
  0.10 success, ``multiscale_blur`` (nmse) 0.30, ``multiscale_pyramid`` 0.10.
- ``ProprioDistance``: MSE between predicted and goal proprio (DINO-WM's alpha term).
- ``ActionMagnitude``: mean squared action, to prefer small actions among equal plans.
``WeightedSum`` composes them; ``make_objective(ObjectiveConfig)`` builds the usual mix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from wmplan.planners.base import Goal, Objective, Prediction

View = Callable[[Tensor], Tensor]  # [N, C, h, w] -> [N, C, h', w']
Frames = str | Sequence[float]  # "last", "all", or one weight per predicted frame


@dataclass
class ObjectiveConfig:
    """Defaults are DINO-WM's objective without the proprio term (alpha = 0, as for Maze)."""

    distance: str = "mse"  # mse | nmse (MSE / goal variance, per view) | cosine
    frames: str = "last"  # last | all
    frame_weights: list[float] | None = None  # one per predicted frame; overrides ``frames``
    pyramid_levels: int = 1  # views pooled by 1, 2, 4, ...; 1 = full resolution only, 0 = none
    blur_sigmas: list[float] = field(default_factory=list)  # extra views blurred with these sigmas (latent px)
    latent_weight: float = 1.0
    proprio_weight: float = 0.0  # DINO-WM alpha: 1 for PushT and Wall, 0 for Maze
    action_weight: float = 0.0
    pose_weight: float = 0.0  # the env's pose_cost on a pose probe's features (JEPA with model.probe_dim)


def check_frames(frames: Frames) -> Frames:
    if isinstance(frames, str) and frames not in ("last", "all"):
        raise ValueError(f"unknown frames {frames!r}; use 'last', 'all' or a list of weights")
    return frames


def frame_weights(frames: Frames, horizon: int, device: torch.device) -> Tensor:
    """Normalised weights [H] over predicted frames (they sum to 1)."""
    if frames == "last":
        w = torch.zeros(horizon, device=device)
        w[-1] = 1.0
        return w
    if frames == "all":
        return torch.full((horizon,), 1.0 / horizon, device=device)
    w = torch.as_tensor(list(frames), dtype=torch.float32, device=device)
    if w.shape != (horizon,) or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"frame weights must be {horizon} non-negative numbers with a positive sum, got {frames}")
    return w / w.sum()


def weighted_over_frames(per_frame: Tensor, weights: Tensor) -> Tensor:
    """[B, S, H] per-frame costs -> [B, S]."""
    return per_frame @ weights


# -- views -------------------------------------------------------------------------
def pooled(factor: int) -> View:
    def view(x: Tensor) -> Tensor:
        if factor > min(x.shape[-2:]):
            raise ValueError(f"pyramid pooling by {factor} exceeds the latent size {tuple(x.shape[-2:])}")
        return F.avg_pool2d(x, factor, ceil_mode=True) if factor > 1 else x

    return view


def blurred(sigma: float) -> View:
    """Separable Gaussian blur; edges replicate so a flat background stays flat."""
    radius = math.ceil(3 * sigma)
    taps = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
    kernel = kernel / kernel.sum()  # [K]

    def view(x: Tensor) -> Tensor:
        C = x.shape[1]
        k = kernel.to(x)
        x = F.pad(x, (radius, radius, radius, radius), mode="replicate")
        x = F.conv2d(x, k.view(1, 1, 1, -1).expand(C, 1, 1, -1), groups=C)  # along w
        return F.conv2d(x, k.view(1, 1, -1, 1).expand(C, 1, -1, 1), groups=C)  # along h

    return view


def make_views(pyramid_levels: int, blur_sigmas: Sequence[float]) -> list[View]:
    if pyramid_levels < 0 or any(s <= 0 for s in blur_sigmas):
        raise ValueError(f"need pyramid_levels >= 0 and blur sigmas > 0, got {pyramid_levels}, {list(blur_sigmas)}")
    views = [pooled(2**i) for i in range(pyramid_levels)] + [blurred(s) for s in blur_sigmas]
    if not views:
        raise ValueError("the latent distance needs at least one view (pyramid_levels >= 1 or a blur sigma)")
    return views


# -- distances: [N, C, h, w] x [N, C, h, w] -> [N] ----------------------------------
def mse(a: Tensor, b: Tensor) -> Tensor:
    return (a - b).pow(2).flatten(1).mean(dim=1)


def nmse(a: Tensor, b: Tensor) -> Tensor:
    """MSE relative to the target's variance: scale-free, so blurred views (whose differences
    are small in absolute terms) weigh as much as the full-resolution one."""
    return mse(a, b) / b.flatten(1).var(dim=1).clamp_min(1e-8)


def cosine(a: Tensor, b: Tensor) -> Tensor:
    return 1.0 - F.cosine_similarity(a.flatten(1), b.flatten(1), dim=1, eps=1e-8)


DISTANCES = {"mse": mse, "nmse": nmse, "cosine": cosine}


# -- terms -------------------------------------------------------------------------
class LatentDistance:
    """Distance between predicted latents [B, S, H, C, h, w] and the goal [B, C, h, w].

    Per frame, the distance is averaged over the views; frames are then weighted. Frames
    with zero weight are never computed (the DINO-WM default scores only the last one).
    """

    def __init__(self, distance: str = "mse", frames: Frames = "last", views: Sequence[View] = (pooled(1),)):
        if distance not in DISTANCES:
            raise ValueError(f"unknown latent distance {distance!r}; known: {sorted(DISTANCES)}")
        self.distance, self.frames, self.views = DISTANCES[distance], check_frames(frames), list(views)

    def __call__(self, pred: Prediction, goal: Goal, actions: Tensor) -> Tensor:
        latents, target = pred["latents"], goal["latents"]
        check_latents(latents, target)
        B, S, H = latents.shape[:3]
        w = frame_weights(self.frames, H, latents.device)
        used = w.nonzero()[:, 0]  # [Hu] frames that count
        x = latents[:, :, used].flatten(0, 2)  # [B*S*Hu, C, h, w]
        per_view = []  # each [B*S*Hu]
        for view in self.views:
            goal_view = view(target).repeat_interleave(S * len(used), dim=0)  # computed once per episode
            per_view.append(self.distance(view(x), goal_view))
        per_frame = torch.stack(per_view).mean(dim=0).view(B, S, len(used))
        return weighted_over_frames(per_frame, w[used])


class ProprioDistance:
    """MSE between predicted proprio [B, S, H, P] and the goal's [B, P], weighted over frames."""

    def __init__(self, frames: Frames = "last"):
        self.frames = check_frames(frames)

    def __call__(self, pred: Prediction, goal: Goal, actions: Tensor) -> Tensor:
        p, g = pred.get("proprio"), goal.get("proprio")
        if p is None or g is None:
            raise ValueError("the proprio term needs pred['proprio'] and goal['proprio']; set proprio_weight: 0")
        if p.dim() != 4 or g.dim() != 2 or p.shape[0] != g.shape[0] or p.shape[-1] != g.shape[-1]:
            raise ValueError(f"proprio shapes {tuple(p.shape)} vs goal {tuple(g.shape)}; expected [B,S,H,P] and [B,P]")
        per_frame = (p - g[:, None, None]).pow(2).mean(dim=-1)  # [B, S, H]
        return weighted_over_frames(per_frame, frame_weights(self.frames, p.shape[2], p.device))


class PoseCost:
    """The env's ``pose_cost`` of predicted pose features [B, S, H, F] against the goal's [B, F],
    weighted over frames: a pose probe's reading scored as the env scores success. An ensemble's
    ``pose_members`` [M, B, S, H, F] and [M, B, F] are scored member by member and averaged."""

    def __init__(self, pose_cost: Callable[[Tensor, Tensor], Tensor], frames: Frames = "last"):
        self.pose_cost, self.frames = pose_cost, check_frames(frames)

    def __call__(self, pred: Prediction, goal: Goal, actions: Tensor) -> Tensor:
        p, g = pred.get("pose"), goal.get("pose")
        if p is None or g is None:
            raise ValueError("the pose term needs a world model with a pose probe (a JEPA trained with "
                             "model.probe_dim); set pose_weight: 0")
        if p.dim() != 4 or g.dim() != 2 or p.shape[0] != g.shape[0] or p.shape[-1] != g.shape[-1]:
            raise ValueError(f"pose shapes {tuple(p.shape)} vs goal {tuple(g.shape)}; expected [B,S,H,F] and [B,F]")
        members, goal_members = pred.get("pose_members"), goal.get("pose_members")
        if members is not None and goal_members is not None:  # an ensemble: the mean of its members' costs
            per_frame = self.pose_cost(members, goal_members[:, :, None, None].to(members)).mean(0)  # [B, S, H]
        else:
            per_frame = self.pose_cost(p, g[:, None, None].to(p))  # [B, S, H]
        return weighted_over_frames(per_frame, frame_weights(self.frames, p.shape[2], p.device))


class ActionMagnitude:
    """Mean squared action [B, S] over the horizon and action dimensions."""

    def __call__(self, pred: Prediction, goal: Goal, actions: Tensor) -> Tensor:
        return actions.pow(2).flatten(2).mean(dim=-1)


class WeightedSum:
    """sum_i weight_i * term_i(pred, goal, actions)."""

    def __init__(self, terms: Sequence[tuple[float, Objective]]):
        if not terms:
            raise ValueError("an objective needs at least one term with a non-zero weight")
        self.terms = list(terms)

    def __call__(self, pred: Prediction, goal: Goal, actions: Tensor) -> Tensor:
        return sum(weight * term(pred, goal, actions) for weight, term in self.terms)


def check_latents(latents: Tensor, target: Tensor) -> None:
    if latents.dim() != 6 or target.dim() != 4:
        raise ValueError(
            f"expected pred latents [B,S,H,C,h,w] and goal latents [B,C,h,w], "
            f"got {tuple(latents.shape)} and {tuple(target.shape)}"
        )
    if latents.shape[0] != target.shape[0] or latents.shape[3:] != target.shape[1:]:
        raise ValueError(f"pred latents {tuple(latents.shape)} do not match goal latents {tuple(target.shape)}")


def make_objective(cfg: ObjectiveConfig, pose_cost: Callable[[Tensor, Tensor], Tensor] | None = None) -> WeightedSum:
    """The weighted sum described by ``cfg``; terms with weight 0 are left out. ``pose_cost``:
    the planning env's (``GoalEnv.pose_cost``), needed when ``pose_weight`` > 0."""
    weights = [cfg.latent_weight, cfg.proprio_weight, cfg.action_weight, cfg.pose_weight]
    if any(w < 0 for w in weights):
        raise ValueError(f"objective weights must be >= 0, got {weights}")
    if cfg.pose_weight > 0 and pose_cost is None:
        raise ValueError("objective.pose_weight > 0 needs the planning env's pose_cost")
    frames: Frames = cfg.frame_weights if cfg.frame_weights is not None else cfg.frames
    views = make_views(cfg.pyramid_levels, cfg.blur_sigmas)
    terms: list[tuple[float, Objective]] = [
        (cfg.latent_weight, LatentDistance(cfg.distance, frames, views)),
        (cfg.proprio_weight, ProprioDistance(frames)),
        (cfg.action_weight, ActionMagnitude()),
    ]
    if cfg.pose_weight > 0:
        terms.append((cfg.pose_weight, PoseCost(pose_cost, frames)))
    return WeightedSum([(w, term) for w, term in terms if w > 0])
