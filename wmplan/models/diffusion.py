"""Diffusion and flow-matching objectives with diffusion forcing (per-frame noise levels).

One noise process covers all four objectives: x_t = alpha(t) x0 + sigma(t) eps, where
- diffusion (eps, v, x): alpha = sqrt(abar_t), sigma = sqrt(1 - abar_t), t an integer in
  [0, T), abar from diffusers' DDIMScheduler (optionally rescaled to zero terminal SNR);
- flow (rectified flow): alpha = 1 - s, sigma = s with s in [0, 1]; the model sees t = s T.
Noise levels are per frame, `t [B, T]`, so every frame can sit at its own level.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor, nn

from wmplan.models.nanowm import shift_actions

OBJECTIVES = ("eps", "v", "x", "flow")
BETA_SCHEDULES = ("linear", "squaredcos_cap_v2")
TIMESTEP_SAMPLINGS = ("uniform", "logit_normal")


@dataclass
class DiffusionConfig:
    """Training objective. Reference defaults: v, squared cosine, zero terminal SNR,
    logit-normal(0, 1) timesteps, min-SNR-5, 1 context frame at noise level 0.02."""

    objective: str = "v"  # eps | v | x | flow
    schedule: str = "squaredcos_cap_v2"  # beta schedule (unused by flow)
    zero_terminal_snr: bool = True  # rescale betas so abar_T = 0 (unused by flow)
    num_train_timesteps: int = 1000
    timestep_sampling: str = "logit_normal"  # uniform | logit_normal
    logit_mean: float = 0.0
    logit_std: float = 1.0
    snr_gamma: float | None = 5.0  # min-SNR-gamma loss weighting; None or 0 = off
    context_frames: int = 1  # leading frames kept at the context noise level, not trained on
    context_noise_level: float = 0.02  # history stabilization level, fraction of T
    action_dropout: float = 0.0  # per-frame action drop probability (classifier-free guidance); 1: action-free
    proprio_loss_weight: float = 1.0

    def __post_init__(self) -> None:
        for name, value, allowed in (
            ("objective", self.objective, OBJECTIVES),
            ("schedule", self.schedule, BETA_SCHEDULES),
            ("timestep_sampling", self.timestep_sampling, TIMESTEP_SAMPLINGS),
        ):
            if value not in allowed:
                raise ValueError(f"DiffusionConfig.{name}={value!r}; expected one of {allowed}")
        if self.objective == "eps" and self.zero_terminal_snr:
            raise ValueError(
                "objective='eps' cannot be used with zero_terminal_snr=True: at the terminal step "
                "abar=0 and x0 = (x_t - sqrt(1-abar) eps) / sqrt(abar) is undefined; use v or x"
            )
        if self.num_train_timesteps < 1:
            raise ValueError(f"num_train_timesteps must be >= 1, got {self.num_train_timesteps}")
        if self.logit_std <= 0:
            raise ValueError(f"logit_std must be > 0, got {self.logit_std}")
        if self.snr_gamma is not None and self.snr_gamma < 0:
            raise ValueError(f"snr_gamma must be >= 0 or None, got {self.snr_gamma}")
        if self.context_frames < 0:
            raise ValueError(f"context_frames must be >= 0, got {self.context_frames}")
        if not 0.0 <= self.context_noise_level < 1.0:
            raise ValueError(f"context_noise_level must be in [0, 1), got {self.context_noise_level}")
        if not 0.0 <= self.action_dropout <= 1.0:
            raise ValueError(f"action_dropout must be in [0, 1], got {self.action_dropout}")
        if self.proprio_loss_weight < 0:
            raise ValueError(f"proprio_loss_weight must be >= 0, got {self.proprio_loss_weight}")


def per_frame(coef: Tensor, x: Tensor) -> Tensor:
    """Per-frame coefficients [B, T] or [T] -> broadcastable against x [B, T, ...]."""
    if coef.ndim == 1:
        coef = coef[None]
    return coef.reshape(*coef.shape, *(1,) * (x.ndim - 2)).to(x.dtype)


class Diffusion:
    """Noise process, targets and the diffusion-forcing training loss for one objective."""

    def __init__(self, cfg: DiffusionConfig):
        self.cfg = cfg
        self.num_timesteps = cfg.num_train_timesteps
        self.is_flow = cfg.objective == "flow"
        self.alphas_cumprod: Tensor | None = None  # flow has no beta schedule
        if not self.is_flow:
            scheduler = DDIMScheduler(
                num_train_timesteps=cfg.num_train_timesteps,
                beta_schedule=cfg.schedule,
                rescale_betas_zero_snr=cfg.zero_terminal_snr,
            )
            self.alphas_cumprod = scheduler.alphas_cumprod  # [T] float32, identical to diffusers
            # Index 0 is the clean sample (abar = 1, diffusers' final_alpha_cumprod), reached by t = -1.
            self._abar_from_clean = torch.cat([torch.ones(1), self.alphas_cumprod])

    # -- noise levels ---------------------------------------------------------------
    def level_to_timestep(self, fraction: Tensor | float) -> Tensor:
        """Noise-level fraction u in [0, 1) -> model timestep: floor(u T) (diffusion) or u T (flow)."""
        t = torch.as_tensor(fraction, dtype=torch.float64) * self.num_timesteps
        if not self.is_flow:
            t = t.floor().clamp(max=self.num_timesteps - 1)
        return t.float()

    def draw_training_timesteps(self, shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
        """Independent training noise levels, e.g. shape (B, T) for diffusion forcing."""
        device = generator.device
        if self.cfg.timestep_sampling == "uniform":
            u = torch.rand(shape, generator=generator, device=device)
        else:  # logit-normal: u = sigmoid(n), n ~ N(mean, std)
            n = torch.randn(shape, generator=generator, device=device)
            u = torch.sigmoid(self.cfg.logit_mean + self.cfg.logit_std * n)
        return self.level_to_timestep(u)

    def sampler_timesteps(self, steps: int) -> Tensor:
        """Levels [steps + 1] of a `steps`-step sampler; entry k for step index k.

        Index `steps` is the terminal level, index 0 the clean sample (t = -1 for diffusion,
        t = 0 for flow). Diffusion uses diffusers' "trailing" spacing, round(k T / steps) - 1,
        so sampling starts exactly at the terminal step T - 1.
        """
        if not 1 <= steps <= self.num_timesteps:
            raise ValueError(f"sampling steps must be in [1, {self.num_timesteps}], got {steps}")
        k = torch.arange(steps + 1, dtype=torch.float64)
        if self.is_flow:
            return (k * self.num_timesteps / steps).float()
        return (torch.round(k * self.num_timesteps / steps) - 1).float()  # k = 0 -> -1, clean

    def alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """Coefficients of x_t = alpha x0 + sigma eps at levels t (any shape)."""
        if self.is_flow:
            s = t.float() / self.num_timesteps
            return 1.0 - s, s
        abar = self._abar_from_clean.to(t.device)[t.long() + 1]
        return abar.sqrt(), (1.0 - abar).sqrt()

    # -- noising, targets, recovery ------------------------------------------------
    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """x0 [B, T, ...] at per-frame levels t [B, T] or [T]."""
        alpha, sigma = self.alpha_sigma(t)
        return per_frame(alpha, x0) * x0 + per_frame(sigma, x0) * noise

    def target(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """What the model is trained to output for x_t = q_sample(x0, t, noise)."""
        objective = self.cfg.objective
        if objective == "eps":
            return noise
        if objective == "x":
            return x0
        if objective == "flow":
            return noise - x0  # velocity dx_s/ds of the straight path
        alpha, sigma = self.alpha_sigma(t)
        return per_frame(alpha, x0) * noise - per_frame(sigma, x0) * x0  # v

    def predict_x0_eps(self, out: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Model output -> (x0_hat, eps_hat). Never divides by alpha except for eps-prediction
        (abar > 0 there: eps with zero terminal SNR is refused)."""
        alpha, sigma = (per_frame(c, x_t) for c in self.alpha_sigma(t))
        objective = self.cfg.objective
        if objective == "eps":
            return (x_t - sigma * out) / alpha, out
        if objective == "x":
            return out, (x_t - alpha * out) / sigma
        if objective == "v":
            return alpha * x_t - sigma * out, alpha * out + sigma * x_t
        return x_t - sigma * out, x_t + alpha * out  # flow: sigma = s, alpha = 1 - s

    def loss_weight(self, t: Tensor) -> Tensor:
        """Per-frame min-SNR-gamma weight for this objective's target (ones when off).

        All weights equal min(snr, gamma) on the x0 error, rescaled to the target's units:
        eps min(snr,g)/snr, x min(snr,g), v and flow min(snr,g) sigma^2 (= min(snr,g)/(snr+1)
        for v). Finite at snr = 0 (abar = 0) and snr = inf (flow at s = 0).
        """
        gamma = self.cfg.snr_gamma
        if not gamma:
            return torch.ones_like(t, dtype=torch.float32)
        alpha, sigma = self.alpha_sigma(t)
        snr = alpha**2 / sigma**2
        if self.cfg.objective == "eps":
            return (gamma / snr).clamp(max=1.0)
        clipped = snr.clamp(max=gamma)
        return clipped if self.cfg.objective == "x" else clipped * sigma**2

    # -- training -------------------------------------------------------------------
    def training_loss(
        self,
        model: nn.Module,
        latents: Tensor,
        actions: Tensor,
        proprio: Tensor | None,
        generator: torch.Generator,
    ) -> tuple[Tensor, Tensor]:
        """Diffusion-forcing loss on a clip.

        latents [B, T, C, h, w]; actions [B, T-1, Aw] (actions[:, i] takes frame i to i+1);
        proprio [B, T, P] | None. Every predicted frame gets its own noise level; the first
        `context_frames` frames sit at the context noise level and are not trained on.
        Returns (loss scalar, per-frame loss [T], 0 for context frames).
        """
        b, n_frames = latents.shape[:2]
        n_ctx = self.cfg.context_frames
        if actions.shape[:2] != (b, n_frames - 1):
            raise ValueError(f"actions must be [B, T-1, Aw] = [{b}, {n_frames - 1}, Aw], got {tuple(actions.shape)}")
        if n_ctx >= n_frames:
            raise ValueError(f"context_frames={n_ctx} leaves no frame to predict in a {n_frames}-frame clip")
        device = latents.device

        t = self.draw_training_timesteps((b, n_frames), generator).to(device)  # [B, T]
        t[:, :n_ctx] = self.level_to_timestep(self.cfg.context_noise_level)
        shifted = shift_actions(actions)  # [B, T, Aw]: frame t gets a_{t-1}, frame 0 zeros
        action_mask = None
        if self.cfg.action_dropout > 0:
            keep = torch.rand((b, n_frames), generator=generator, device=generator.device)
            action_mask = (keep >= self.cfg.action_dropout).to(device)  # [B, T]

        clean = [latents] if proprio is None else [latents, proprio]
        noise = [randn_tensor(x.shape, generator, device, x.dtype) for x in clean]
        noisy = [self.q_sample(x, t, n) for x, n in zip(clean, noise)]
        outs = model(noisy[0], t, shifted, noisy[1] if proprio is not None else None, action_mask)
        if proprio is not None and outs[1] is None:
            raise ValueError("proprio was given but the model returned no proprio prediction")

        weight = self.loss_weight(t)  # [B, T]
        frame_loss = torch.zeros_like(weight)
        for x, n, out, scale in zip(clean, noise, outs, (1.0, self.cfg.proprio_loss_weight)):
            err = (out.float() - self.target(x, n, t).float()) ** 2
            frame_loss = frame_loss + scale * err.flatten(2).mean(-1)  # [B, T]
        frame_loss = (weight * frame_loss)[:, n_ctx:]  # [B, T - n_ctx]
        per_frame_loss = F.pad(frame_loss.detach().mean(0), (n_ctx, 0))
        return frame_loss.mean(), per_frame_loss
