"""Model-predictive path integral: the new plan is a softmin-weighted average of candidates."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from wmplan.planners.base import GaussianPlanner


@dataclass
class MPPIConfig:
    name: str = "mppi"
    num_samples: int = 300
    iterations: int = 10
    noise_sigma: float = 0.5  # fixed exploration noise of every action dimension
    temperature: float = 0.1  # in units of the population's cost std (see MPPI.update)
    noise_beta: float = 0.0  # sampling noise ~ 1/f^beta over env time: 0 white, 1-2 iCEM
    max_batch: int = 1024  # candidates (episodes x samples) per rollout call


class MPPI(GaussianPlanner):
    def __init__(self, cfg: MPPIConfig):
        super().__init__(cfg.num_samples, cfg.iterations, cfg.noise_sigma, cfg.max_batch, cfg.noise_beta)
        if cfg.temperature <= 0:
            raise ValueError(f"MPPI temperature must be > 0, got {cfg.temperature}")
        self.temperature = cfg.temperature

    def update(self, samples: Tensor, costs: Tensor) -> tuple[Tensor, Tensor]:
        # Costs are standardised per episode before the softmin: latent distances differ by
        # orders of magnitude between codecs, and a raw-cost temperature would need retuning.
        spread = costs.std(dim=1, keepdim=True).clamp_min(1e-12)
        logits = -(costs - costs.min(dim=1, keepdim=True).values) / (self.temperature * spread)
        weights = torch.softmax(logits, dim=1)  # [B, S]
        mean = (weights[:, :, None, None] * samples).sum(dim=1)  # [B, T, A]
        return mean, self.sigma(mean)  # the exploration noise stays fixed
