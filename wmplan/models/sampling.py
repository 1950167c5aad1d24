"""Rolling a diffusion-forcing world model out: scheduling matrices, DDIM / flow-Euler
steps, classifier-free action guidance (Vid2World) and sliding windows.

A window holds `Tc` context frames followed by the frames being generated. A scheduling
matrix gives every generated frame's step index per row (`steps` = pure noise, 0 = clean);
each row transition is one model call over the window, and every frame whose index drops
takes one DDIM (or Euler) step. Finished and context frames are shown to the model at the
small context noise level (history stabilization), as in training.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

import torch
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor, nn

from wmplan.models.diffusion import Diffusion, per_frame
from wmplan.models.nanowm import ContextCache

SAMPLERS = ("ddim", "euler")
FRAME_SCHEDULES = ("sequential", "pyramid", "full_sequence")


@dataclass
class SamplerConfig:
    """How to sample. ``sampler`` and ``context_noise_level`` belong to the model: left None
    they are read from its training objective and level (``resolve_sampler``); a value that
    contradicts the model is refused, naming both."""

    sampler: str | None = None  # ddim (eps/v/x objectives) | euler (flow) | None: from the objective
    steps: int = 20  # sampling steps per frame
    eta: float = 0.0  # DDIM stochasticity (0 = deterministic); euler needs 0
    schedule: str = "sequential"  # sequential | pyramid | full_sequence
    guidance_scale: float = 1.0  # classifier-free action guidance; 1 = off
    context_noise_level: float | None = None  # history stabilization level; None: the training level
    context_cache: bool = True  # run context frames once per window, not at every step (causal models)

    def __post_init__(self) -> None:
        if self.sampler is not None and self.sampler not in SAMPLERS:
            raise ValueError(f"SamplerConfig.sampler={self.sampler!r}; expected one of {SAMPLERS} or None")
        if self.schedule not in FRAME_SCHEDULES:
            raise ValueError(f"SamplerConfig.schedule={self.schedule!r}; expected one of {FRAME_SCHEDULES}")
        if self.steps < 1:
            raise ValueError(f"SamplerConfig.steps must be >= 1, got {self.steps}")
        if self.eta < 0:
            raise ValueError(f"SamplerConfig.eta must be >= 0, got {self.eta}")
        if self.context_noise_level is not None and not 0.0 <= self.context_noise_level < 1.0:
            raise ValueError(f"context_noise_level must be in [0, 1), got {self.context_noise_level}")
        if self.guidance_scale < 0:
            raise ValueError(f"guidance_scale must be >= 0, got {self.guidance_scale}")


def resolve_sampler(cfg: SamplerConfig, diffusion: Diffusion) -> SamplerConfig:
    """``cfg`` with the model's sampler kind and context noise level filled in; an explicit
    value that contradicts the model is a ValueError naming both."""
    objective, trained_level = diffusion.cfg.objective, diffusion.cfg.context_noise_level
    sampler = "euler" if diffusion.is_flow else "ddim"
    if cfg.sampler not in (None, sampler):
        raise ValueError(f"sampler.sampler={cfg.sampler!r} contradicts the model: its objective {objective!r} "
                         f"samples with {sampler!r} (leave sampler.sampler unset to read it from the model)")
    if cfg.context_noise_level not in (None, trained_level):
        raise ValueError(f"sampler.context_noise_level={cfg.context_noise_level} contradicts the model, trained at "
                         f"diffusion.context_noise_level={trained_level} (leave it unset to read it from the model)")
    return dataclasses.replace(cfg, sampler=sampler, context_noise_level=trained_level)


def scheduling_matrix(mode: str, n_frames: int, steps: int) -> Tensor:
    """Step indices [rows, n_frames] (long): row 0 all `steps` (pure noise), last row all 0.

    Frame f lags frame f-1 by `lag` rows: full_sequence 0 (all frames share the level),
    pyramid 1, sequential `steps` (one frame at a time). Within a row later frames are
    never less noisy, so the frames that change between two rows are contiguous.
    """
    if mode not in FRAME_SCHEDULES:
        raise ValueError(f"scheduling mode {mode!r}; expected one of {FRAME_SCHEDULES}")
    if n_frames < 1 or steps < 1:
        raise ValueError(f"need n_frames >= 1 and steps >= 1, got {n_frames}, {steps}")
    lag = {"full_sequence": 0, "pyramid": 1, "sequential": steps}[mode]
    rows = torch.arange(steps + lag * (n_frames - 1) + 1)[:, None]
    frames = torch.arange(n_frames)[None]
    return (steps - rows + lag * frames).clamp(0, steps)


def ddim_step(
    diffusion: Diffusion, x0: Tensor, eps: Tensor, t_from: Tensor, t_to: Tensor,
    eta: float, noise: Tensor | None = None,
) -> Tensor:
    """One DDIM step per frame, levels t_from -> t_to [n] for x0_hat, eps_hat [B, n, ...].

    x_s = alpha_s x0 + sqrt(sigma_s^2 - std^2) eps + std z, with
    std = eta sigma_s / sigma_t sqrt(1 - abar_t / abar_s) and z = ``noise`` (needed when eta > 0).
    For rectified flow (alpha = 1 - s, sigma = s) and eta = 0 this is exactly the Euler step
    x_t + (s - t) v_hat.
    """
    alpha_from, sigma_from = diffusion.alpha_sigma(t_from)
    alpha_to, sigma_to = diffusion.alpha_sigma(t_to)
    std = eta * sigma_to / sigma_from * (1 - (alpha_from / alpha_to) ** 2).clamp(min=0).sqrt()
    direction = (sigma_to**2 - std**2).clamp(min=0).sqrt()
    x = per_frame(alpha_to, x0) * x0 + per_frame(direction, eps) * eps
    if eta > 0:
        if noise is None:
            raise ValueError("a DDIM step with eta > 0 needs noise")
        x = x + per_frame(std, x0) * noise
    return x


def _predict(model: nn.Module, inputs: list[Tensor], t: Tensor, actions: Tensor,
             action_mask: Tensor | None, past: ContextCache | None) -> list[Tensor]:
    """Model outputs for [latents] or [latents, proprio], cast to the inputs' dtype."""
    proprio = inputs[1] if len(inputs) > 1 else None
    kwargs = {} if past is None else {"past": past}  # any denoiser works without a cache
    out, out_proprio = model(inputs[0], t, actions, proprio, action_mask, **kwargs)
    if len(inputs) > 1 and out_proprio is None:
        raise ValueError("context_proprio was given but the model returned no proprio prediction")
    return [o.to(x.dtype) for o, x in zip((out, out_proprio), inputs)]


def _guided_outputs(model: nn.Module, inputs: list[Tensor], t: Tensor, actions: Tensor,
                    first_active: int, scale: float, past: ContextCache | None) -> list[Tensor]:
    """Outputs for frames first_active.. with causal action guidance out_u + w (out_c - out_u).

    The unconditional pass drops only the actions of the frames being denoised. Both passes
    run as one forward over a doubled batch (conditional rows first); ``past`` must then be
    the doubled cache (``ContextCache.tile(2)``).
    """
    b, n = inputs[0].shape[:2]
    t = t.expand(b, n)
    if scale == 1.0:
        return [o[:, first_active:] for o in _predict(model, inputs, t, actions, None, past)]
    keep = (torch.arange(n, device=t.device) < first_active).expand(b, n)  # [B, n]
    mask = torch.cat([torch.ones_like(keep), keep])  # [2B, n]
    both = _predict(model, [torch.cat([x, x]) for x in inputs], torch.cat([t, t]), torch.cat([actions, actions]),
                    mask, past)
    return [torch.lerp(u, c, scale)[:, first_active:] for c, u in (o.chunk(2) for o in both)]


Draw = Callable[[tuple[int, ...], torch.dtype], Tensor]  # (shape after the batch, dtype) -> [B, *shape]


def _denoise_window(
    model: nn.Module, diffusion: Diffusion, context: list[Tensor], new: list[Tensor], actions: Tensor,
    cfg: SamplerConfig, draw: Draw,
) -> tuple[list[Tensor], list[Tensor]]:
    """Denoise the frames that follow the context frames of a window.

    context: per state [Bc, Tc, ...] (latents, then proprio if any), stabilized at the context
    noise level; new: per state [B, Tn, ...] pure noise, with B = r * Bc (row i continues
    context row i // r); actions [B, Tc + Tn, Aw]. With ``cfg.context_cache`` (and a model whose
    ``supports_context_cache`` is true: a causal NanoWM) the context runs once, at batch Bc, and every model call sees only
    the new frames. Returns (the window's states [B, Tc + Tn, ...] with finished frames
    stabilized, the clean new frames [B, Tn, ...] per state).
    """
    n_ctx, (n, n_new) = context[0].shape[1], new[0].shape[:2]
    repeats, device = n // context[0].shape[0], new[0].device
    levels = scheduling_matrix(cfg.schedule, n_new, cfg.steps)  # [R, Tn]
    t_step = diffusion.sampler_timesteps(cfg.steps)[levels].to(device)  # [R, Tn]
    t_context = diffusion.level_to_timestep(cfg.context_noise_level).to(device)
    t_model = torch.where(levels.to(device) == 0, t_context, t_step)  # finished frames sit at the context level
    expanded = [c.repeat_interleave(repeats, dim=0) for c in context]  # [B, Tc, ...]
    past, causal = None, getattr(model, "causal", True)
    if cfg.context_cache and getattr(model, "supports_context_cache", False):
        ctx_t = t_context.expand(context[0].shape[:2])
        past = model.cache_context(context[0], ctx_t, actions[::repeats, :n_ctx], *context[1:])
        past = past.repeat_interleave(repeats)
        if cfg.guidance_scale != 1.0:  # guidance runs [conditional; unconditional] rows
            past = past.tile(2)
    states, clean = list(new), [[] for _ in new]
    for r in range(levels.shape[0] - 1):
        changing = (levels[r] != levels[r + 1]).nonzero()[:, 0]
        lo, hi = int(changing[0]), int(changing[-1]) + 1
        n_finished = int((levels[r + 1, lo:hi] == 0).sum())  # a prefix of lo..hi: earlier frames finish first
        # A causal denoiser cannot see the pure-noise frames after `hi`: leave them out. A
        # bidirectional one sees the whole window at its current levels, as in training.
        end = hi if causal else n_new
        if past is None:
            inputs = [torch.cat([c, s[:, :end]], 1) for c, s in zip(expanded, states)]
            t = torch.cat([t_context.expand(n_ctx), t_model[r, :end]])
            outs = _guided_outputs(model, inputs, t, actions[:, : n_ctx + end], n_ctx + lo, cfg.guidance_scale, None)
            outs = [o[:, : hi - lo] for o in outs]
        else:
            outs = _guided_outputs(model, [s[:, :hi] for s in states], t_model[r, :hi],
                                   actions[:, n_ctx : n_ctx + hi], lo, cfg.guidance_scale, past)
        for i, (state, out) in enumerate(zip(states, outs)):
            x0, eps = diffusion.predict_x0_eps(out, state[:, lo:hi], t_step[r, lo:hi])
            noise = draw(x0.shape[1:], x0.dtype) if cfg.eta > 0 else None
            new_frames = ddim_step(diffusion, x0, eps, t_step[r, lo:hi], t_step[r + 1, lo:hi], cfg.eta, noise)
            if n_finished:
                done = new_frames[:, :n_finished]
                clean[i].append(done)
                stabilized = diffusion.q_sample(done, t_context.expand(n_finished), draw(done.shape[1:], done.dtype))
                new_frames = torch.cat([stabilized, new_frames[:, n_finished:]], 1)
            states[i] = torch.cat([state[:, :lo], new_frames, state[:, hi:]], 1)
    window = [torch.cat([c, s], 1) for c, s in zip(expanded, states)]
    return window, [torch.cat(frames, 1) for frames in clean]


def generate(
    model: nn.Module,
    diffusion: Diffusion,
    context: Tensor,
    context_proprio: Tensor | None,
    actions: Tensor,
    cfg: SamplerConfig,
    window: int,
    generator: torch.Generator | list[torch.Generator],
    context_actions: Tensor | None = None,
    candidates: int = 1,
) -> tuple[Tensor, Tensor | None]:
    """Predict H frames after the context under the given actions.

    context [B, Tc, C, h, w]; context_proprio [B, Tc, P] | None; actions [B * candidates, H, Aw]:
    ``candidates`` action sequences per context (rows b * candidates ...), where actions[:, i]
    takes the frame before predicted frame i to it; context_actions [B, Tc-1, Aw] | None are
    the actions between context frames (zeros when None).

    Randomness: every draw (context stabilization, the new frames' initial noise, re-noising,
    DDIM eta) is made once per context with ``generator`` (one, or a list of B, one per
    context) and shared by its candidates. These common random numbers make candidates of one
    context differ by their actions alone, and a candidate's rollout independent of which
    other candidates share the batch.

    A model call sees at most `window` frames: when Tc + H > window the first chunk fills the
    window, then it slides so the newest Tc frames are the context of the next chunk.
    Gradients flow if the caller enables them (no in-place updates); autocast is respected.
    Returns (latents [B * candidates, H, C, h, w], proprio [B * candidates, H, P] | None).
    """
    cfg = resolve_sampler(cfg, diffusion)
    _check_generate_inputs(diffusion, context, context_proprio, actions, context_actions, cfg, window, candidates)
    b, n_ctx = context.shape[:2]
    horizon, device = actions.shape[1], context.device

    def draw(shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:  # [B * candidates, *shape]
        return randn_tensor((b, *shape), generator, device, dtype).repeat_interleave(candidates, dim=0)

    null_action = actions.new_zeros(actions.shape[0], 1, actions.shape[2])
    if context_actions is None:
        context_actions = null_action[:b].expand(b, n_ctx - 1, -1)
    seq_actions = torch.cat([context_actions.repeat_interleave(candidates, dim=0), actions], 1)  # entry i -> frame i+1

    t_context = diffusion.level_to_timestep(cfg.context_noise_level).to(device)
    clean = [context] if context_proprio is None else [context, context_proprio]
    # Context rows stay at batch B until the window slides onto generated frames.
    contexts = [diffusion.q_sample(x, t_context.expand(n_ctx), randn_tensor(x.shape, generator, device, x.dtype))
                for x in clean]
    chunks: list[list[Tensor]] = [[] for _ in clean]
    n_done = 0
    while n_done < horizon:
        n_new = min(window - n_ctx, horizon - n_done)
        new = [draw((n_new, *x.shape[2:]), x.dtype) for x in clean]
        # The window's first frame gets the null action, as frame 0 of every training clip does.
        window_actions = torch.cat([null_action, seq_actions[:, n_done:n_done + n_ctx - 1 + n_new]], 1)
        states, new_frames = _denoise_window(model, diffusion, contexts, new, window_actions, cfg, draw)
        contexts = [s[:, -n_ctx:] for s in states]
        for chunk, frames in zip(chunks, new_frames):
            chunk.append(frames)
        n_done += n_new
    outputs = [torch.cat(c, 1) for c in chunks]
    return outputs[0], (outputs[1] if len(outputs) > 1 else None)


def _check_generate_inputs(
    diffusion: Diffusion, context: Tensor, context_proprio: Tensor | None, actions: Tensor,
    context_actions: Tensor | None, cfg: SamplerConfig, window: int, candidates: int,
) -> None:
    if cfg.sampler == "euler" and cfg.eta != 0:
        raise ValueError(f"the euler (flow) sampler is deterministic; eta must be 0, got {cfg.eta}")
    if context.ndim != 5 or actions.ndim != 3:
        raise ValueError(f"context must be [B, Tc, C, h, w] and actions [B, H, Aw], got "
                         f"{tuple(context.shape)} and {tuple(actions.shape)}")
    b, n_ctx = context.shape[:2]
    if candidates < 1:
        raise ValueError(f"candidates must be >= 1, got {candidates}")
    if actions.shape[0] != b * candidates or actions.shape[1] < 1:
        raise ValueError(f"actions must be [{b} contexts x {candidates} candidates, H >= 1, Aw], "
                         f"got {tuple(actions.shape)}")
    if n_ctx < 1 or n_ctx >= window:
        raise ValueError(f"need 1 <= context frames Tc < window, got Tc={n_ctx}, window={window}")
    if context_proprio is not None and context_proprio.shape[:2] != (b, n_ctx):
        raise ValueError(f"context_proprio must be [{b}, {n_ctx}, P], got {tuple(context_proprio.shape)}")
    if context_actions is not None and context_actions.shape != (b, n_ctx - 1, actions.shape[2]):
        raise ValueError(f"context_actions must be [{b}, {n_ctx - 1}, {actions.shape[2]}], "
                         f"got {tuple(context_actions.shape)}")
    diffusion.sampler_timesteps(cfg.steps)  # validates steps against the training timesteps
