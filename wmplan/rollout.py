"""``WorldModel``: a trained checkpoint exposed as a batched, differentiable rollout function.

    wm = WorldModel.from_checkpoint("outputs/train/wall/checkpoints/latest.ckpt")
    ctx = wm.encode(obs)                       # obs: pixels uint8 [B, H, W, 3], proprio [B, P]
    pred = wm.rollout(ctx, actions)            # actions [B, S, H, Aw] -> latents [B, S, H, C, h, w]
    frames = wm.decode(pred["latents"][:, 0])  # uint8 [B, H, h*, w*, 3]
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from omegaconf import OmegaConf

from wmplan.checkpoint import complete_state_dict, read_checkpoint, resolve_path
from wmplan.hardware import autocast, resolve_precision
from wmplan.models.sampling import SamplerConfig, generate, resolve_sampler
from wmplan.module import WorldModelModule
from wmplan.planners.base import Prediction
from wmplan.seeding import stream_seed


def file_hash(path: str | Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file (identifies the checkpoint a result came from)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


class WorldModel:
    """Encode observations, roll out candidate action sequences, decode latents."""

    def __init__(self, module: WorldModelModule, sampler: SamplerConfig, use_ema: bool = True,
                 chunk_size: int | str = "auto", checkpoint_hash: str | None = None, precision: str = "auto"):
        self.module = module.eval()
        # auto: bf16 only where this device runs it natively and fast (wmplan.hardware).
        self.precision = resolve_precision(precision, next(module.parameters()).device)
        self.model = module.ema.module if use_ema else module.model
        self.sampler = resolve_sampler(sampler, module.diffusion)  # refuses settings that contradict the model
        self.checkpoint_hash = checkpoint_hash
        cfg = module.cfg
        self.window = int(cfg.data.num_frames)
        self.context_frames = int(cfg.diffusion.context_frames)  # real observations the model continues from
        self.frameskip = int(cfg.env.frameskip)
        self.action_dim = int(cfg.model.action_dim)
        self.uses_proprio = int(cfg.model.proprio_dim) > 0
        self.env_id = str(cfg.env.id)
        self.resolution = int(cfg.env.resolution)
        std = cfg.data.get("action_std")  # recorded by wmplan-train; absent in older checkpoints
        self.action_std = None if std is None else np.asarray(std, dtype=np.float32)  # [A] env actions
        self.chunk_size = resolve_chunk_size(chunk_size, self.model, self.window, next(module.parameters()).device)

    def check_env(self, env_id: str, frameskip: int, resolution: int) -> None:
        """Raise a ValueError naming the first setting in which the planning env differs from
        the env the model was trained on (a model at 64 px cannot plan on 224 px frames)."""
        for name, trained, given in (("env id", self.env_id, env_id), ("frameskip", self.frameskip, frameskip),
                                     ("resolution", self.resolution, resolution)):
            if str(trained) != str(given):
                raise ValueError(f"world model was trained with {name} {trained}, but the planning env has {given}")

    @classmethod
    def from_checkpoint(cls, path: str | Path, sampler: SamplerConfig | dict | None = None,
                        use_ema: bool = True, chunk_size: int | str = "auto", precision: str = "auto") -> "WorldModel":
        """Build from a checkpoint (``latest.ckpt``), a pretrained file or ``pretrained:<name>``;
        the sampler defaults to the planning default (one full-sequence step)."""
        path = resolve_path(path)
        ckpt = read_checkpoint(path)
        cfg = OmegaConf.create(ckpt["wmplan_config"])
        module = WorldModelModule(cfg, codec_architecture=ckpt.get("codec_architecture"))
        module.load_state_dict(complete_state_dict(ckpt["state_dict"]))
        if sampler is None:
            sampler = planning_sampler()
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
                sampler: SamplerConfig | None = None, seed: int | Sequence[int] | torch.Tensor = 0) -> Prediction:
        """Predict H frames for S candidate action sequences per episode.

        context: latents [B, C, h, w] or [B, Tc, C, h, w] (+ proprio [B, (Tc,) P] and, with
        Tc > 1, the executed actions between context frames [B, Tc-1, Aw]);
        actions: [B, S, H, Aw]. Returns latents [B, S, H, C, h, w], proprio [B, S, H, P] | None.

        ``seed``: one per episode (B ints), or one int from which episode b's is hashed. Each
        episode's sampling noise comes from its own seed alone and is shared by its candidates
        (common random numbers, see ``generate``), so a candidate's prediction does not depend
        on the other episodes in the batch, on S or on ``chunk_size``. Candidates run in chunks
        of at most ``chunk_size`` (whole episodes where they fit) to bound memory; the context
        runs once per episode and chunk. Gradients flow when the caller enables them.
        """
        latents, proprio = self._check_rollout_inputs(context, actions)
        b, s, h, aw = actions.shape
        seeds = episode_seeds(seed, b)
        ctx_a = context.get("actions")
        ctx_a = ctx_a.to(actions.dtype) if ctx_a is not None and ctx_a.shape[1] > 0 else None
        cfg = sampler or self.sampler
        outs, outs_p = [], []
        for episodes, candidates in rollout_chunks(b, s, self.chunk_size):
            # outputs stay fp32 under bf16 autocast
            with autocast(self.precision, latents.device):
                out, out_p = generate(
                    self.model, self.module.diffusion, latents[episodes],
                    None if proprio is None else proprio[episodes], actions[episodes, candidates].flatten(0, 1),
                    cfg, window=self.window, generator=[torch.Generator().manual_seed(x) for x in seeds[episodes]],
                    context_actions=None if ctx_a is None else ctx_a[episodes],
                    candidates=len(range(s)[candidates]),
                )
            n_eps = len(range(b)[episodes])
            outs.append(out.float().unflatten(0, (n_eps, -1)))  # [b', s', H, C, h, w]
            outs_p.append(None if out_p is None else out_p.float().unflatten(0, (n_eps, -1)))
        pred_latents = join_chunks(outs, b, s)
        pred_proprio = None if outs_p[0] is None else join_chunks(outs_p, b, s)
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


def episode_seeds(seed: int | Sequence[int] | torch.Tensor, batch: int) -> list[int]:
    """``batch`` per-episode seeds: given as a sequence, or hashed from one int per position."""
    if isinstance(seed, torch.Tensor):
        seed = seed.tolist()
    if isinstance(seed, (int, np.integer)):
        return [stream_seed(seed, b) for b in range(batch)]
    seeds = [int(x) for x in seed]
    if len(seeds) != batch:
        raise ValueError(f"need one seed per episode ({batch}), got {len(seeds)}")
    return seeds


ACTIVATION_BUDGET = 48 * 2**20  # bytes of the largest activation of one CPU model call


def resolve_chunk_size(chunk_size: int | str, model: torch.nn.Module, window: int, device: torch.device) -> int:
    """Candidates per model call; ``auto`` bounds the largest activation on the CPU.

    On a CPU, chunks trade per-op overhead (small) against memory traffic (large). Measured
    (mini Wall model, 300 candidates, 1 sampling step, 2 cores, ``tune_cpu_allocator``):
    0.88 s in chunks of 13, 0.57-0.61 s in chunks of 52-100, 0.91 s in one call; the budget
    gives 78, whose largest activation (the MLP's input projection) is 48 MiB. Without the
    tuned allocator every fresh buffer over glibc's mmap threshold is page-faulted in again
    and the best chunks were smaller (26: 0.98 s). GPUs take 1024 per call.
    """
    if chunk_size != "auto":
        if not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size must be 'auto' or an int >= 1, got {chunk_size!r}")
        return chunk_size
    if device.type != "cpu":
        return 1024
    cfg = model.cfg
    h, w = cfg.latent_hw
    tokens = (h // cfg.patch_size) * (w // cfg.patch_size) + int(cfg.proprio_dim > 0)
    per_candidate = window * tokens * 2 * int(cfg.mlp_ratio * cfg.width) * 4  # fp32 bytes of fc_in's output
    return max(1, ACTIVATION_BUDGET // per_candidate)


def rollout_chunks(episodes: int, candidates: int, chunk_size: int) -> list[tuple[slice, slice]]:
    """(episode slice, candidate slice) blocks of at most ``chunk_size`` candidates: whole
    episodes together where an episode's candidates fit, else one episode cut into pieces."""
    if candidates <= chunk_size:
        per = chunk_size // candidates
        return [(slice(e, e + per), slice(None)) for e in range(0, episodes, per)]
    return [(slice(e, e + 1), slice(c, c + chunk_size))
            for e in range(episodes) for c in range(0, candidates, chunk_size)]


def join_chunks(parts: list[torch.Tensor], episodes: int, candidates: int) -> torch.Tensor:
    """Reassemble ``rollout_chunks`` outputs [b', s', ...] into [episodes, candidates, ...]."""
    if parts[0].shape[1] == candidates:  # whole episodes per chunk
        return torch.cat(parts)
    per_episode = len(parts) // episodes
    return torch.cat([torch.cat(parts[e * per_episode:(e + 1) * per_episode], 1) for e in range(episodes)])


def planning_sampler(steps: int = 1) -> SamplerConfig:
    """The planning default (``plan.yaml``): all future frames denoised together in one step,
    the model's direct prediction of the clean frames from pure noise. The sampler kind and
    context noise level come from the model."""
    return SamplerConfig(steps=steps, eta=0.0, schedule="full_sequence", guidance_scale=1.0)
