"""Lightning module that trains a NanoWM dynamics model with a diffusion / flow objective.

The module owns the denoiser, its EMA copy, the frozen latent codec (for validation
pictures) and the proprio normalisation. Batches are clips from ``ClipDataset`` (pixels)
or ``LatentClipDataset`` (cached latents): ``latents``/``pixels`` [B, T, ...],
``actions`` [B, T-1, Aw], ``proprio`` [B, T, P].
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch.optim.swa_utils import AveragedModel

from wmplan.checkpoint import numpy_rng_state, set_numpy_rng_state
from wmplan.metrics import psnr, ssim
from wmplan.models.codecs import CodecConfig, LatentCodec, build_codec
from wmplan.models.diffusion import Diffusion, DiffusionConfig
from wmplan.models.nanowm import NanoWM, NanoWMConfig
from wmplan.models.sampling import SamplerConfig, generate
from wmplan.video_metrics import VideoMetrics, frechet_from_features


class EMAWithWarmup:
    """EMA update whose decay ramps up as min(decay, (1+n)/(10+n)) over the first updates.

    A fixed 0.999 would keep 0.999^n of the (zero-initialised) initial weights: still 29%
    after 1,250 steps, which makes the EMA model's samples useless in short CPU runs. A class,
    not a closure, so the module pickles (``strategy=ddp_spawn``).
    """

    def __init__(self, decay: float):
        self.decay = decay

    def __call__(self, ema_params: list[torch.Tensor], params: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        n = float(num_averaged)
        weight = 1.0 - min(self.decay, (1.0 + n) / (10.0 + n))
        if torch.is_floating_point(ema_params[0]):
            torch._foreach_lerp_(ema_params, params, weight)
        else:  # integer buffers are copied, not averaged
            for ema, current in zip(ema_params, params):
                ema.copy_(current)


def fast_adamw(device: torch.device) -> dict[str, bool]:
    """AdamW's fused kernel where torch has one (CPU, CUDA): one pass over the parameters
    instead of a dozen foreach ops; S/2 on a 2-core AMX Xeon spent 160 ms of a 400 ms step in
    foreach AdamW, 24 ms fused."""
    return {"fused": True} if device.type in ("cpu", "cuda") else {"foreach": True}


def warmup_cosine(step: int, warmup: int, total: int, min_ratio: float = 0.0) -> float:
    """Learning-rate multiplier: linear warmup, then cosine decay to ``min_ratio``."""
    if step < warmup:
        return (step + 1) / max(1, warmup)
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class WorldModelModule(L.LightningModule):
    """NanoWM + diffusion objective + EMA, configured by the resolved training config."""

    def __init__(self, cfg: DictConfig | dict, codec: LatentCodec | None = None,
                 codec_architecture: dict | None = None):
        """``codec``: a built codec; else one is built from ``cfg.latent``, from its weights
        folder, or from ``codec_architecture`` (a checkpoint's) for a state dict to fill."""
        super().__init__()
        cfg = OmegaConf.create(cfg) if isinstance(cfg, dict) else cfg
        self.cfg = cfg
        self.save_hyperparameters({"config": OmegaConf.to_container(cfg, resolve=True)})
        self.model = NanoWM(NanoWMConfig(**cfg.model))
        self.ema = AveragedModel(
            self.model, multi_avg_fn=EMAWithWarmup(cfg.training.ema_decay), use_buffers=True
        )
        self.ema.requires_grad_(False)
        if cfg.training.get("compile", False):
            self.model.compile()  # in place (lazy, on first call): the state dict keys stay the same
        self.diffusion = Diffusion(DiffusionConfig(**cfg.diffusion))
        self.codec = codec if codec is not None else build_codec(CodecConfig(**cfg.latent), codec_architecture)
        self.codec.requires_grad_(False)
        p = max(1, int(cfg.model.proprio_dim))
        self.register_buffer("proprio_mean", torch.zeros(p))
        self.register_buffer("proprio_std", torch.ones(p))
        self._video_metrics: VideoMetrics | None = None  # a plain attribute: its nets stay out of checkpoints
        self._video_features: dict[str, dict[str, list[torch.Tensor]]] = {}

    # -- data helpers ---------------------------------------------------------------
    def set_proprio_stats(self, mean: np.ndarray, std: np.ndarray) -> None:
        self.proprio_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.proprio_std.copy_(torch.as_tensor(std, dtype=torch.float32).clamp_min(1e-6))

    def normalize_proprio(self, proprio: torch.Tensor | None) -> torch.Tensor | None:
        if proprio is None or self.cfg.model.proprio_dim == 0:
            return None
        return (proprio.float() - self.proprio_mean) / self.proprio_std

    def denormalize_proprio(self, proprio: torch.Tensor) -> torch.Tensor:
        """Normalised proprio [..., P] back in env units."""
        return proprio.float() * self.proprio_std + self.proprio_mean

    def batch_latents(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Latents [B, T, C, h, w] of a batch: cached, or encoded from pixels on the fly."""
        if "latents" in batch:
            return batch["latents"].float()
        with torch.no_grad():
            return self.codec.encode(batch["pixels"]).float()

    # -- training -------------------------------------------------------------------
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        latents = self.batch_latents(batch)  # [B, T, C, h, w]
        generator = self._step_generator(latents.device, batch_idx)
        loss, per_frame = self.diffusion.training_loss(
            self.model, latents, batch["actions"].float(),
            self.normalize_proprio(batch.get("proprio")), generator=generator,
        )
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite training loss at step {self.global_step}")
        self.log("train/loss", loss, prog_bar=True, sync_dist=True)
        for i, value in enumerate(per_frame):
            self.log(f"train/loss_frame{i}", value, sync_dist=True)
        return loss

    def _step_generator(self, device: torch.device, batch_idx: int = 0) -> torch.Generator:
        """Noise for micro-batch k depends only on (seed, k, rank): resumed runs draw the same
        noise. With gradient accumulation each micro-batch of a step gets its own noise."""
        accumulate = int(self.cfg.training.accumulate_grad_batches)
        micro = self.global_step * accumulate + batch_idx % accumulate
        seed = int(self.cfg.training.seed) * 1_000_003 + micro * 97 + self.global_rank
        return torch.Generator(device=device).manual_seed(seed)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # Clipped here, not by the Trainer: Lightning refuses gradient_clip_val with a fused
        # optimizer under AMP, although bf16 has no loss scale to undo.
        if self.cfg.training.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.training.grad_clip)

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        # The EMA follows each optimizer step at once (not per accumulated micro-batch), so a
        # checkpoint written at the end of a batch, by any callback, holds that step's EMA.
        super().optimizer_step(*args, **kwargs)
        self.ema.update_parameters(self.model)

    def configure_optimizers(self):
        t = self.cfg.training
        decay, no_decay = [], []
        for name, param in self.model.named_parameters():
            (no_decay if param.ndim < 2 or "norm" in name else decay).append(param)
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=t.lr, betas=(0.9, 0.999), **fast_adamw(self.device),
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_cosine(step, t.warmup_steps, t.max_steps, t.min_lr_ratio)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # -- validation -----------------------------------------------------------------
    @torch.no_grad()
    def predict_clip(
        self, latents: torch.Tensor, actions: torch.Tensor, proprio: torch.Tensor | None,
        context_frames: int, sampler: SamplerConfig, seed: int, use_ema: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Predict frames context_frames.. of a clip from its first frames and true actions."""
        model = self.ema.module if use_ema else self.model
        proprio = self.normalize_proprio(proprio)
        generator = torch.Generator(device=latents.device).manual_seed(seed)
        return generate(
            model, self.diffusion, latents[:, :context_frames],
            None if proprio is None else proprio[:, :context_frames],
            actions[:, context_frames - 1:], sampler, window=int(self.cfg.data.num_frames),
            generator=generator,
        )

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        latents = self.batch_latents(batch)
        generator = torch.Generator(device=latents.device).manual_seed(10_000 + batch_idx)
        loss, _ = self.diffusion.training_loss(
            self.ema.module, latents, batch["actions"].float(),
            self.normalize_proprio(batch.get("proprio")), generator=generator,
        )
        self.log("val/loss", loss, sync_dist=True)
        v = self.cfg.validation
        if batch_idx >= v.num_prediction_batches:
            return
        n_ctx = int(self.cfg.diffusion.context_frames)  # what the model was trained to continue
        pred, _ = self.predict_clip(
            latents, batch["actions"].float(), batch.get("proprio"), n_ctx,
            SamplerConfig(**v.sampler), seed=batch_idx,
        )
        self.log("val/latent_mse", torch.mean((pred - latents[:, n_ctx:]) ** 2), sync_dist=True)
        if not self.codec.can_decode or "pixels" not in batch:
            return
        truth = batch["pixels"][:, n_ctx:]  # [B, H, h, w, 3] uint8
        frames = self.codec.decode(pred)
        copy_last = batch["pixels"][:, n_ctx - 1 : n_ctx].expand_as(truth)
        self.log("val/psnr", psnr(frames, truth).mean(), sync_dist=True)
        self.log("val/ssim", ssim(frames, truth).mean(), sync_dist=True)
        self.log("val/psnr_copy_last", psnr(copy_last, truth).mean(), sync_dist=True)
        self.log("val/ssim_copy_last", ssim(copy_last, truth).mean(), sync_dist=True)
        self._collect_video_metrics(frames, copy_last, truth)
        if batch_idx == 0 and self.global_rank == 0:
            self._write_sample_video(batch["pixels"][:, :n_ctx], frames, truth)

    def video_metrics(self) -> VideoMetrics:
        """The nets of ``validation.metrics`` (rf-FVD / rf-FID always: random-feature, not comparable
        to published FVD/FID; FVD / FID / LPIPS from local weights when configured), built once."""
        if self._video_metrics is None:
            m = self.cfg.validation.get("metrics") or {}  # older checkpoints' configs have none
            self._video_metrics = VideoMetrics(m.get("i3d"), m.get("inception"), m.get("lpips"), m.get("lpips_lin"),
                                               int(m.get("rf_seed", 0))).to(self.device)
        return self._video_metrics

    def _collect_video_metrics(self, frames: torch.Tensor, copy_last: torch.Tensor, truth: torch.Tensor) -> None:
        """LPIPS per batch; Fréchet features kept until the epoch ends (a distance of sets, not a mean
        over batches). frames, copy_last, truth: uint8 [B, H, h, w, 3]."""
        metrics = self.video_metrics()
        for name, video in (("model", frames), ("copy_last", copy_last), ("truth", truth)):
            for key, f in metrics.features(video).items():
                self._video_features.setdefault(name, {}).setdefault(key, []).append(f)
        for name, video in (("", frames), ("_copy_last", copy_last)):
            d = metrics.lpips_per_frame(video, truth)
            if d is not None:
                self.log(f"val/lpips{name}", d.mean(), sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        """val/rf_fvd, val/rf_fid (+ val/fvd, val/fid) over every prediction clip of all ranks."""
        features, self._video_features = self._video_features, {}
        if not features:
            return
        sets = {name: {key: self._gather(torch.cat(f)) for key, f in by_key.items()} for name, by_key in features.items()}
        for key, truth in sets["truth"].items():
            if len(truth) < 2:  # a covariance needs two samples
                continue
            self.log(f"val/{key}", frechet_from_features(sets["model"][key], truth), sync_dist=True)
            self.log(f"val/{key}_copy_last", frechet_from_features(sets["copy_last"][key], truth), sync_dist=True)

    def _gather(self, f: torch.Tensor) -> torch.Tensor:
        """Features [n, D] of every rank [world * n, D] (the same on all ranks)."""
        if self.trainer.world_size == 1:
            return f
        return self.all_gather(f.to(self.device)).flatten(0, 1).cpu()

    def _write_sample_video(self, context: torch.Tensor, pred: torch.Tensor, truth: torch.Tensor) -> None:
        """GIF: rows = clips; left = context + prediction, right = context + ground truth."""
        from wmplan.video import save_comparison_gif

        out = Path(self.cfg.out_dir) / "samples" / f"step{self.global_step:07d}.gif"
        save_comparison_gif(out, context[:4].cpu().numpy(), pred[:4].cpu().numpy(), truth[:4].cpu().numpy())
        if isinstance(self.logger, L.pytorch.loggers.TensorBoardLogger):
            video = torch.cat([context[:4], pred[:4]], dim=1).permute(0, 1, 4, 2, 3)  # [B, T, 3, H, W]
            try:
                self.logger.experiment.add_video("val/prediction", video, self.global_step, fps=4)
            except ImportError:  # add_video needs moviepy; the GIF on disk is always written
                pass

    # -- checkpoint extras ------------------------------------------------------------
    # Plain values and tensors only: the file loads with torch.load(weights_only=True).
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["wmplan_config"] = OmegaConf.to_container(self.cfg, resolve=True)
        checkpoint["codec_architecture"] = self.codec.architecture()
        checkpoint["rng_state"] = {"torch": torch.get_rng_state(), "numpy": numpy_rng_state()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        check_config_matches(checkpoint.get("wmplan_config"), self.cfg)
        rng = checkpoint.get("rng_state")
        if rng is not None:
            torch.set_rng_state(rng["torch"])
            set_numpy_rng_state(rng["numpy"])


ARCHITECTURE_KEYS = ("model", "diffusion", "latent")


def check_config_matches(saved: dict | None, cfg: DictConfig) -> None:
    """Refuse a checkpoint whose model / diffusion / latent config differs from ``cfg``."""
    if saved is None:
        raise ValueError("checkpoint has no 'wmplan_config': not a wmplan world-model checkpoint")
    current = OmegaConf.to_container(cfg, resolve=True)
    diffs = [
        f"{group}.{key}: checkpoint={saved.get(group, {}).get(key)!r} config={value!r}"
        for group in ARCHITECTURE_KEYS
        for key, value in current[group].items()
        if saved.get(group, {}).get(key) != value
    ]
    if diffs:
        raise ValueError("checkpoint config does not match the requested config:\n  " + "\n  ".join(diffs))
