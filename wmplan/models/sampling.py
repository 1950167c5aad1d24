"""Rolling a diffusion-forcing world model out: scheduling matrices, DDIM / flow-Euler
steps, classifier-free action guidance (Vid2World) and sliding windows.

A window holds `Tc` context frames followed by the frames being generated. A scheduling
matrix gives every generated frame's step index per row (`steps` = pure noise, 0 = clean);
each row transition is one model call over the window, and every frame whose index drops
takes one DDIM (or Euler) step. Finished and context frames are shown to the model at the
small context noise level (history stabilization), as in training.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor, nn

from wmplan.models.diffusion import Diffusion, per_frame

SAMPLERS = ("ddim", "euler")
SCHEDULES = ("sequential", "pyramid", "full_sequence")


@dataclass
class SamplerConfig:
    """How to sample: `ddim` for eps/v/x objectives, `euler` for flow."""

    sampler: str = "ddim"  # ddim | euler
    steps: int = 20  # sampling steps per frame
    eta: float = 0.0  # DDIM stochasticity (0 = deterministic); euler needs 0
    schedule: str = "sequential"  # sequential | pyramid | full_sequence
    guidance_scale: float = 1.0  # classifier-free action guidance; 1 = off
    context_noise_level: float = 0.02  # history stabilization level, fraction of T

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise ValueError(f"SamplerConfig.sampler={self.sampler!r}; expected one of {SAMPLERS}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"SamplerConfig.schedule={self.schedule!r}; expected one of {SCHEDULES}")
        if self.steps < 1:
            raise ValueError(f"SamplerConfig.steps must be >= 1, got {self.steps}")
        if self.eta < 0:
            raise ValueError(f"SamplerConfig.eta must be >= 0, got {self.eta}")
        if self.sampler == "euler" and self.eta != 0:
            raise ValueError(f"the euler (flow) sampler is deterministic; eta must be 0, got {self.eta}")
        if not 0.0 <= self.context_noise_level < 1.0:
            raise ValueError(f"context_noise_level must be in [0, 1), got {self.context_noise_level}")
        if self.guidance_scale < 0:
            raise ValueError(f"guidance_scale must be >= 0, got {self.guidance_scale}")


def scheduling_matrix(mode: str, n_frames: int, steps: int) -> Tensor:
    """Step indices [rows, n_frames] (long): row 0 all `steps` (pure noise), last row all 0.

    Frame f lags frame f-1 by `lag` rows: full_sequence 0 (all frames share the level),
    pyramid 1, sequential `steps` (one frame at a time). Within a row later frames are
    never less noisy, so the frames that change between two rows are contiguous.
    """
    if mode not in SCHEDULES:
        raise ValueError(f"scheduling mode {mode!r}; expected one of {SCHEDULES}")
    if n_frames < 1 or steps < 1:
        raise ValueError(f"need n_frames >= 1 and steps >= 1, got {n_frames}, {steps}")
    lag = {"full_sequence": 0, "pyramid": 1, "sequential": steps}[mode]
    rows = torch.arange(steps + lag * (n_frames - 1) + 1)[:, None]
    frames = torch.arange(n_frames)[None]
    return (steps - rows + lag * frames).clamp(0, steps)


def ddim_step(
    diffusion: Diffusion, x0: Tensor, eps: Tensor, t_from: Tensor, t_to: Tensor,
    eta: float, generator: torch.Generator,
) -> Tensor:
    """One DDIM step per frame, levels t_from -> t_to [n] for x0_hat, eps_hat [B, n, ...].

    x_s = alpha_s x0 + sqrt(sigma_s^2 - std^2) eps + std z, with
    std = eta sigma_s / sigma_t sqrt(1 - abar_t / abar_s). For rectified flow
    (alpha = 1 - s, sigma = s) and eta = 0 this is exactly the Euler step x_t + (s - t) v_hat.
    """
    alpha_from, sigma_from = diffusion.alpha_sigma(t_from)
    alpha_to, sigma_to = diffusion.alpha_sigma(t_to)
    std = eta * sigma_to / sigma_from * (1 - (alpha_from / alpha_to) ** 2).clamp(min=0).sqrt()
    direction = (sigma_to**2 - std**2).clamp(min=0).sqrt()
    x = per_frame(alpha_to, x0) * x0 + per_frame(direction, eps) * eps
    if eta > 0:
        x = x + per_frame(std, x0) * randn_tensor(x0.shape, generator, x0.device, x0.dtype)
    return x


def _predict(model: nn.Module, inputs: list[Tensor], t: Tensor, actions: Tensor,
             action_mask: Tensor | None) -> list[Tensor]:
    """Model outputs for [latents] or [latents, proprio], cast to the inputs' dtype."""
    out, out_proprio = model(inputs[0], t, actions, inputs[1] if len(inputs) > 1 else None, action_mask)
    if len(inputs) > 1 and out_proprio is None:
        raise ValueError("context_proprio was given but the model returned no proprio prediction")
    return [o.to(x.dtype) for o, x in zip((out, out_proprio), inputs)]


def _guided_outputs(model: nn.Module, inputs: list[Tensor], t: Tensor, actions: Tensor,
                    first_active: int, scale: float) -> list[Tensor]:
    """Outputs for frames first_active.. with causal action guidance out_u + w (out_c - out_u);
    the unconditional pass drops only the actions of the frames being denoised."""
    b, n = inputs[0].shape[:2]
    t = t.expand(b, n)
    cond = [o[:, first_active:] for o in _predict(model, inputs, t, actions, None)]
    if scale == 1.0:
        return cond
    keep = torch.arange(n, device=t.device) < first_active  # [n]
    uncond = _predict(model, inputs, t, actions, keep.expand(b, n))
    return [torch.lerp(u[:, first_active:], c, scale) for u, c in zip(uncond, cond)]


def _denoise_window(
    model: nn.Module, diffusion: Diffusion, states: list[Tensor], actions: Tensor,
    n_ctx: int, cfg: SamplerConfig, generator: torch.Generator,
) -> tuple[list[Tensor], list[Tensor]]:
    """Denoise the frames after the n_ctx context frames of a window.

    states: [latents [B, W, C, h, w]] (+ [proprio [B, W, P]]), context frames stabilized,
    the others pure noise; actions [B, W, Aw]. Returns (states with finished frames
    stabilized, the clean generated frames [B, W - n_ctx, ...] per state).
    """
    states = list(states)
    device = states[0].device
    n_new = states[0].shape[1] - n_ctx
    levels = F.pad(scheduling_matrix(cfg.schedule, n_new, cfg.steps), (n_ctx, 0))  # [R, W], context at 0
    t_step = diffusion.sampling_timesteps(cfg.steps)[levels].to(device)  # [R, W]
    t_context = diffusion.timestep(cfg.context_noise_level).to(device)
    t_model = torch.where(levels.to(device) == 0, t_context, t_step)  # finished frames sit at the context level
    clean: list[list[Tensor]] = [[] for _ in states]
    for r in range(levels.shape[0] - 1):
        changing = (levels[r] != levels[r + 1]).nonzero()[:, 0]
        lo, hi = int(changing[0]), int(changing[-1]) + 1
        n_finished = int((levels[r + 1, lo:hi] == 0).sum())  # a prefix of lo..hi: earlier frames finish first
        # The denoiser is causal in time, so the pure-noise frames after `hi` cannot matter: leave them out.
        outs = _guided_outputs(model, [s[:, :hi] for s in states], t_model[r, :hi], actions[:, :hi],
                               lo, cfg.guidance_scale)
        for i, (state, out) in enumerate(zip(states, outs)):
            x0, eps = diffusion.predict_x0_eps(out, state[:, lo:hi], t_step[r, lo:hi])
            new = ddim_step(diffusion, x0, eps, t_step[r, lo:hi], t_step[r + 1, lo:hi], cfg.eta, generator)
            if n_finished:
                done = new[:, :n_finished]
                clean[i].append(done)
                noise = randn_tensor(done.shape, generator, device, done.dtype)
                new = torch.cat([diffusion.q_sample(done, t_context.expand(n_finished), noise),
                                 new[:, n_finished:]], 1)
            states[i] = torch.cat([state[:, :lo], new, state[:, hi:]], 1)
    return states, [torch.cat(frames, 1) for frames in clean]


def generate(
    model: nn.Module,
    diffusion: Diffusion,
    context: Tensor,
    context_proprio: Tensor | None,
    actions: Tensor,
    cfg: SamplerConfig,
    window: int,
    generator: torch.Generator,
    context_actions: Tensor | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Predict H frames after the context under the given actions.

    context [B, Tc, C, h, w]; context_proprio [B, Tc, P] | None; actions [B, H, Aw], where
    actions[:, i] takes the frame before predicted frame i to it; context_actions
    [B, Tc-1, Aw] | None are the actions between context frames (zeros when None).
    A model call sees at most `window` frames: when Tc + H > window the first chunk fills the
    window, then it slides so the newest Tc frames are the context of the next chunk.
    Gradients flow if the caller enables them (no in-place updates); autocast is respected.
    Returns (latents [B, H, C, h, w], proprio [B, H, P] | None).
    """
    _check_generate_inputs(diffusion, context, context_proprio, actions, context_actions, cfg, window)
    b, n_ctx = context.shape[:2]
    horizon, device = actions.shape[1], context.device
    null_action = actions.new_zeros(b, 1, actions.shape[2])
    if context_actions is None:
        context_actions = null_action.expand(b, n_ctx - 1, -1)
    seq_actions = torch.cat([context_actions, actions], 1)  # [B, Tc-1+H]: entry i leads to frame i+1

    t_context = diffusion.timestep(cfg.context_noise_level).to(device)
    clean = [context] if context_proprio is None else [context, context_proprio]
    states = [diffusion.q_sample(x, t_context.expand(n_ctx), randn_tensor(x.shape, generator, device, x.dtype))
              for x in clean]
    chunks: list[list[Tensor]] = [[] for _ in states]
    n_done = 0
    while n_done < horizon:
        n_new = min(window - n_ctx, horizon - n_done)
        states = [torch.cat([s[:, -n_ctx:], randn_tensor((b, n_new, *s.shape[2:]), generator, device, s.dtype)], 1)
                  for s in states]
        # The window's first frame gets the null action, as frame 0 of every training clip does.
        window_actions = torch.cat([null_action, seq_actions[:, n_done:n_done + n_ctx - 1 + n_new]], 1)
        states, new_frames = _denoise_window(model, diffusion, states, window_actions, n_ctx, cfg, generator)
        for chunk, frames in zip(chunks, new_frames):
            chunk.append(frames)
        n_done += n_new
    outputs = [torch.cat(c, 1) for c in chunks]
    return outputs[0], (outputs[1] if len(outputs) > 1 else None)


def _check_generate_inputs(
    diffusion: Diffusion, context: Tensor, context_proprio: Tensor | None, actions: Tensor,
    context_actions: Tensor | None, cfg: SamplerConfig, window: int,
) -> None:
    expected = "euler" if diffusion.is_flow else "ddim"
    if cfg.sampler != expected:
        raise ValueError(f"objective {diffusion.cfg.objective!r} needs sampler {expected!r}, got {cfg.sampler!r}")
    if context.ndim != 5 or actions.ndim != 3:
        raise ValueError(f"context must be [B, Tc, C, h, w] and actions [B, H, Aw], got "
                         f"{tuple(context.shape)} and {tuple(actions.shape)}")
    b, n_ctx = context.shape[:2]
    if actions.shape[0] != b or actions.shape[1] < 1:
        raise ValueError(f"actions must be [{b}, H >= 1, Aw], got {tuple(actions.shape)}")
    if n_ctx < 1 or n_ctx >= window:
        raise ValueError(f"need 1 <= context frames Tc < window, got Tc={n_ctx}, window={window}")
    if context_proprio is not None and context_proprio.shape[:2] != (b, n_ctx):
        raise ValueError(f"context_proprio must be [{b}, {n_ctx}, P], got {tuple(context_proprio.shape)}")
    if context_actions is not None and context_actions.shape != (b, n_ctx - 1, actions.shape[2]):
        raise ValueError(f"context_actions must be [{b}, {n_ctx - 1}, {actions.shape[2]}], "
                         f"got {tuple(context_actions.shape)}")
    diffusion.sampling_timesteps(cfg.steps)  # validates steps against the training timesteps
