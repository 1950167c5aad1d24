"""``WorldModel``: a trained checkpoint exposed as a batched, differentiable rollout function.

    wm = WorldModel.from_checkpoint("outputs/train/wall/checkpoints/latest.ckpt")
    ctx = wm.encode(obs)                       # obs: pixels uint8 [B, H, W, 3], proprio [B, P]
    pred = wm.rollout(ctx, actions)            # actions [B, S, H, Aw] -> latents [B, S, H, C, h, w]
    frames = wm.decode(pred["latents"][:, 0])  # uint8 [B, H, h*, w*, 3]
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf

from wmplan.models.sampling import SamplerConfig, generate
from wmplan.module import WorldModelModule

Prediction = dict[str, torch.Tensor | None]


def file_hash(path: str | Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file (identifies the checkpoint a result came from)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a wmplan checkpoint with clear errors for missing or corrupt files."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"world-model checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises several types for truncated / foreign files
        raise ValueError(f"cannot read checkpoint {path}: corrupt or not a torch file ({err})") from err
    if not isinstance(ckpt, dict) or "wmplan_config" not in ckpt or "state_dict" not in ckpt:
        raise ValueError(f"{path} is not a wmplan world-model checkpoint (no wmplan_config/state_dict)")
    return ckpt


class WorldModel:
    """Encode observations, roll out candidate action sequences, decode latents."""

    def __init__(self, module: WorldModelModule, sampler: SamplerConfig, use_ema: bool = True,
                 chunk_size: int = 1024, checkpoint_hash: str | None = None, precision: str = "bf16"):
        if precision not in ("bf16", "fp32"):
            raise ValueError(f"precision must be 'bf16' or 'fp32', got {precision!r}")
        self.precision = precision
        self.module = module.eval()
        self.model = module.ema.module if use_ema else module.model
        self.sampler = sampler
        self.chunk_size = chunk_size
        self.checkpoint_hash = checkpoint_hash
        cfg = module.cfg
        self.window = int(cfg.data.num_frames)
        self.frameskip = int(cfg.env.frameskip)
        self.action_dim = int(cfg.model.action_dim)
        self.uses_proprio = int(cfg.model.proprio_dim) > 0
        self.env_id = str(cfg.env.id)
        self.resolution = int(cfg.env.resolution)

    def check_env(self, env_id: str, frameskip: int, resolution: int) -> None:
        """Raise a ValueError naming the first setting in which the planning env differs from
        the env the model was trained on (a model at 64 px cannot plan on 224 px frames)."""
        for name, trained, given in (("env id", self.env_id, env_id), ("frameskip", self.frameskip, frameskip),
                                     ("resolution", self.resolution, resolution)):
            if str(trained) != str(given):
                raise ValueError(f"world model was trained with {name} {trained}, but the planning env has {given}")

    @classmethod
    def from_checkpoint(cls, path: str | Path, sampler: SamplerConfig | dict | None = None,
                        use_ema: bool = True, chunk_size: int = 1024, precision: str = "bf16") -> "WorldModel":
        """Build from ``latest.ckpt``; the sampler defaults to the planning default
        (full_sequence, few DDIM / Euler steps)."""
        ckpt = load_checkpoint(path)
        cfg = OmegaConf.create(ckpt["wmplan_config"])
        module = WorldModelModule(cfg)
        module.load_state_dict(ckpt["state_dict"])
        if sampler is None:
            sampler = planning_sampler(cfg.diffusion.objective)
        elif isinstance(sampler, dict):
            sampler = SamplerConfig(**sampler)
        return cls(module, sampler, use_ema, chunk_size, checkpoint_hash=file_hash(path), precision=precision)

    # -- encoding / decoding --------------------------------------------------------
    @torch.no_grad()
    def encode(self, obs: dict[str, Any]) -> dict[str, torch.Tensor | None]:
        """obs pixels uint8 [B, H, W, 3] (or [B, T, H, W, 3]), proprio [B, (T,) P] ->
        latents [B, (T,) C, h, w] and normalised proprio."""
        pixels = torch.as_tensor(np.asarray(obs["pixels"]))
        single = pixels.ndim == 4
        if single:
            pixels = pixels[:, None]
        latents = self.module.codec.encode(pixels).float()  # [B, T, C, h, w]
        proprio = None
        if self.uses_proprio:
            if obs.get("proprio") is None:
                raise ValueError("this world model uses proprio but the observation has none")
            p = torch.as_tensor(np.asarray(obs["proprio"]), dtype=torch.float32)
            proprio = self.module.normalize_proprio(p[:, None] if single else p)
        if single:
            latents = latents[:, 0]
            proprio = None if proprio is None else proprio[:, 0]
        return {"latents": latents, "proprio": proprio}

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """latents [B, T, C, h, w] -> uint8 frames [B, T, H, W, 3]."""
        return self.module.codec.decode(latents)

    # -- rollout ----------------------------------------------------------------------
    def rollout(self, context: dict[str, torch.Tensor | None], actions: torch.Tensor,
                sampler: SamplerConfig | None = None, seed: int = 0) -> Prediction:
        """Predict H frames for S candidate action sequences per episode.

        context: latents [B, C, h, w] or [B, Tc, C, h, w] (+ proprio [B, (Tc,) P] and, with
        Tc > 1, the executed actions between context frames [B, Tc-1, Aw]);
        actions: [B, S, H, Aw]. Returns latents [B, S, H, C, h, w], proprio [B, S, H, P] | None.
        Candidates are processed in chunks of ``chunk_size`` to bound memory; gradients flow
        when enabled by the caller (gradient planners). The sampling noise of candidate
        ``b * S + s`` comes from its own generator seeded by ``(seed, b * S + s)``, so results
        do not depend on ``chunk_size`` (one generator per chunk made them depend on it).
        """
        latents, proprio = self._check_rollout_inputs(context, actions)
        b, s, h, aw = actions.shape
        flat_actions = actions.reshape(b * s, h, aw)
        ctx = latents.repeat_interleave(s, dim=0)  # [B*S, Tc, C, h, w]
        ctx_p = None if proprio is None else proprio.repeat_interleave(s, dim=0)
        ctx_a = context.get("actions")
        if ctx_a is not None and ctx_a.shape[1] > 0:
            ctx_a = ctx_a.to(flat_actions.dtype).repeat_interleave(s, dim=0)  # [B*S, Tc-1, Aw]
        else:
            ctx_a = None
        cfg = sampler or self.sampler
        outs, outs_p = [], []
        for start in range(0, b * s, self.chunk_size):
            end = start + self.chunk_size
            generator = [torch.Generator().manual_seed(candidate_seed(seed, i)) for i in range(start, min(end, b * s))]
            # bf16 autocast: ~2x faster planning on CPUs with AMX and on GPUs; outputs stay fp32.
            with torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
                out, out_p = generate(
                    self.model, self.module.diffusion, ctx[start:end],
                    None if ctx_p is None else ctx_p[start:end], flat_actions[start:end],
                    cfg, window=self.window, generator=generator,
                    context_actions=None if ctx_a is None else ctx_a[start:end],
                )
            outs.append(out.float())
            outs_p.append(None if out_p is None else out_p.float())
        pred_latents = torch.cat(outs).reshape(b, s, h, *latents.shape[2:])
        pred_proprio = None if outs_p[0] is None else torch.cat(outs_p).reshape(b, s, h, -1)
        return {"latents": pred_latents, "proprio": pred_proprio}

    def _check_rollout_inputs(self, context: dict, actions: torch.Tensor):
        latents, proprio = context["latents"], context.get("proprio")
        if latents.ndim == 4:  # a single context frame
            latents = latents[:, None]
            proprio = None if proprio is None else proprio[:, None]
        if actions.ndim != 4 or actions.shape[-1] != self.action_dim:
            raise ValueError(f"actions must be [B, S, H, {self.action_dim}], got {tuple(actions.shape)}")
        if actions.shape[0] != latents.shape[0]:
            raise ValueError(f"actions batch {actions.shape[0]} != context batch {latents.shape[0]}")
        if not torch.isfinite(actions).all():
            raise ValueError("actions contain NaN or inf")
        if self.uses_proprio and proprio is None:
            raise ValueError("this world model needs context proprio")
        return latents, (proprio if self.uses_proprio else None)


def candidate_seed(seed: int, index: int) -> int:
    """32-bit seed of candidate ``index``'s sampling noise: a splitmix64 hash of (seed, index).

    Hashed to 32 bits because torch's CPU generator (mt19937) ignores a seed's high 32 bits.
    """
    x = (int(seed) * 0x9E3779B97F4A7C15 + int(index) + 1) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (x ^ (x >> 31)) >> 32


def planning_sampler(objective: str, steps: int = 3) -> SamplerConfig:
    """The planning default: all future frames denoised together in a few steps."""
    return SamplerConfig(
        sampler="euler" if objective == "flow" else "ddim", steps=steps, eta=0.0,
        schedule="full_sequence", guidance_scale=1.0, context_noise_level=0.02,
    )

