"""Planners and objectives, built by name from their Hydra configs.

``build_planner(cfg)`` picks the planner class from ``cfg["name"]`` and passes the rest to
its config dataclass; ``build_objective(cfg)`` builds ``ObjectiveConfig(**cfg)``'s weighted sum.
"""

from __future__ import annotations

from dataclasses import asdict, is_dataclass
from typing import Any, Mapping

from wmplan.planners.base import Goal, Objective, Planner, PlanResult, Prediction, RolloutFn
from wmplan.planners.cem import CEM, CEMConfig
from wmplan.planners.gradient import GradientConfig, GradientPlanner
from wmplan.planners.mppi import MPPI, MPPIConfig
from wmplan.planners.objectives import ObjectiveConfig, WeightedSum, make_objective
from wmplan.planners.random_shooting import (
    NoActions,
    NoActionsConfig,
    RandomActions,
    RandomActionsConfig,
    RandomShooting,
    RandomShootingConfig,
)

PLANNERS: dict[str, tuple[type, type[Planner]]] = {
    "cem": (CEMConfig, CEM),
    "mppi": (MPPIConfig, MPPI),
    "gradient": (GradientConfig, GradientPlanner),
    "random_shooting": (RandomShootingConfig, RandomShooting),
    "random": (RandomActionsConfig, RandomActions),
    "noop": (NoActionsConfig, NoActions),
}


def as_dict(cfg: Any) -> dict[str, Any]:
    """A plain dict from a dataclass, a mapping or an OmegaConf DictConfig."""
    if is_dataclass(cfg):
        return asdict(cfg)
    if type(cfg).__module__.startswith("omegaconf"):
        from omegaconf import OmegaConf

        return OmegaConf.to_container(cfg, resolve=True)
    if isinstance(cfg, Mapping):
        return dict(cfg)
    raise TypeError(f"expected a config dataclass or mapping, got {type(cfg).__name__}")


def make_config(cls: type, cfg: Mapping[str, Any], what: str) -> Any:
    try:
        return cls(**cfg)
    except TypeError as err:  # unknown or missing keys
        raise ValueError(f"bad {what} config {dict(cfg)}: {err}") from None


def build_planner(cfg: Any) -> Planner:
    """The planner named ``cfg["name"]`` (one of ``PLANNERS``), configured by the other keys."""
    cfg = as_dict(cfg)
    name = cfg.get("name")
    if name not in PLANNERS:
        raise ValueError(f"unknown planner {name!r}; known: {sorted(PLANNERS)}")
    config_cls, planner_cls = PLANNERS[name]
    return planner_cls(make_config(config_cls, cfg, f"planner {name!r}"))


def build_objective(cfg: Any, env: Any = None) -> WeightedSum:
    """The objective described by an ``ObjectiveConfig`` (or a mapping of its fields); ``env``, the
    planning env, supplies ``pose_cost`` for a ``pose_weight`` term."""
    return make_objective(make_config(ObjectiveConfig, as_dict(cfg), "objective"),
                          None if env is None else env.unwrapped.pose_cost)


__all__ = [
    "PLANNERS",
    "Goal",
    "Objective",
    "ObjectiveConfig",
    "PlanResult",
    "Planner",
    "Prediction",
    "RolloutFn",
    "build_objective",
    "build_planner",
]
