"""Cross-entropy method: refit a Gaussian to the top-k candidates (DINO-WM's planner)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from wmplan.planners.base import GaussianPlanner


@dataclass
class CEMConfig:
    """Defaults are DINO-WM's: 300 samples, top 30, sigma 1 (``var_scale``), 30 iterations."""

    name: str = "cem"
    num_samples: int = 300
    topk: int = 30
    var_scale: float = 1.0  # initial sigma of every action dimension
    iterations: int = 30
    noise_beta: float = 0.0  # sampling noise ~ 1/f^beta over env time: 0 white (DINO-WM), 1-2 iCEM
    max_batch: int = 1024  # candidates (episodes x samples) per rollout call


class CEM(GaussianPlanner):
    def __init__(self, cfg: CEMConfig):
        super().__init__(cfg.num_samples, cfg.iterations, cfg.var_scale, cfg.max_batch, cfg.noise_beta)
        if not 2 <= cfg.topk <= cfg.num_samples:
            raise ValueError(f"CEM topk must be in [2, num_samples={cfg.num_samples}], got {cfg.topk}")
        self.topk = cfg.topk

    def update(self, samples: Tensor, costs: Tensor) -> tuple[Tensor, Tensor]:
        idx = costs.topk(self.topk, dim=1, largest=False).indices  # [B, k]
        idx = idx[:, :, None, None].expand(-1, -1, *samples.shape[2:])  # [B, k, T, A]
        elites = samples.gather(1, idx)  # [B, k, T, A]
        return elites.mean(dim=1), elites.std(dim=1)
