"""Train a small diffusers AutoencoderKL on an environment's own frames (`trained_vae`).

    wmplan-train-vae env=wall train.steps=2000

Loss: L1 (or MSE) reconstruction + a small KL term, weighted as in Latent Diffusion
(`kl_weight` relative to the per-image *summed* reconstruction loss). The saved folder is a
plain diffusers model whose `scaling_factor` gives its latents unit variance; it is
written atomically and then loaded back through `build_codec` to report held-out PSNR/SSIM.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import hydra
import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from wmplan.checkpoint import load_resume_point, save_resume_point
from wmplan.cli import reports_user_errors
from wmplan.config_dir import CONFIG_DIR
from wmplan.hardware import autocast, check_precision, default_device, tune_cpu_allocator
from wmplan.metrics import psnr, ssim
from wmplan.models.codecs import CodecConfig, build_codec


@dataclass
class VAETrainConfig:
    block_out_channels: tuple[int, ...] = (32, 64, 64)  # one level per entry; 2^(n-1) downsampling
    latent_channels: int = 4
    layers_per_block: int = 1
    norm_num_groups: int = 32
    steps: int = 2000
    batch_size: int = 32
    lr: float = 5e-4
    recon_loss: str = "l1"  # l1 | mse
    kl_weight: float = 1e-6
    max_train_frames: int = 20000  # frames sampled from the dataset's train split
    max_val_frames: int = 256  # held-out frames for PSNR/SSIM
    val_fraction: float = 0.05  # array input only: share of frames held out
    scale_frames: int = 1024  # frames whose latents set the scaling factor
    seed: int = 0
    device: str = "auto"  # auto (cuda, mps, else cpu) | cpu | cuda | mps
    precision: str = "auto"  # auto (bf16 where it runs natively and fast, see wmplan.hardware) | bf16 | fp32
    log_every: int = 100
    checkpoint_every: int = 250  # steps between resume points (a killed run continues from the last)

    def __post_init__(self) -> None:
        self.block_out_channels = tuple(self.block_out_channels)
        if self.recon_loss not in ("l1", "mse"):
            raise ValueError(f"recon_loss must be 'l1' or 'mse', got {self.recon_loss!r}")
        self.precision = check_precision(self.precision)


def train_vae(data: str | Path | np.ndarray, out_dir: str | Path, cfg: VAETrainConfig | None = None) -> dict:
    """Train on `data` (a dataset folder for ClipDataset, or uint8 frames [N, H, W, 3]),
    save a diffusers AutoencoderKL to `out_dir`, return held-out metrics."""
    cfg = cfg or VAETrainConfig()
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    train, val = _split_frames(data, cfg, rng)
    device = torch.device(default_device() if cfg.device == "auto" else cfg.device)
    vae = _new_vae(cfg, resolution=train.shape[1]).to(device)
    start = time.perf_counter()
    resume = Path(out_dir).with_name(f".{Path(out_dir).name}.resume.pt")
    resume.parent.mkdir(parents=True, exist_ok=True)
    _fit(vae, train, cfg, device, resume)
    vae.register_to_config(scaling_factor=_unit_variance_scale(vae, train, cfg, rng, device))
    result = _save(vae.cpu(), Path(out_dir), val)
    resume.unlink(missing_ok=True)
    result.update(train_frames=len(train), seconds=round(time.perf_counter() - start, 1))
    return result


def _split_frames(data, cfg: VAETrainConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(data, (str, Path)):
        return _load_split(data, "train", cfg.max_train_frames, rng), _load_split(data, "val", cfg.max_val_frames, rng)
    frames = np.asarray(data)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[1] != frames.shape[2]:
        raise ValueError(f"expected square uint8 frames [N, H, W, 3], got {frames.dtype} {list(frames.shape)}")
    n_val = max(1, round(len(frames) * cfg.val_fraction))
    if len(frames) - n_val < 1:
        raise ValueError(f"need at least 2 frames to train and validate, got {len(frames)}")
    order = rng.permutation(len(frames))
    return frames[order[n_val:][: cfg.max_train_frames]], frames[order[:n_val][: cfg.max_val_frames]]


def _load_split(path: str | Path, split: str, max_frames: int, rng: np.random.Generator) -> np.ndarray:
    """Up to `max_frames` random frames of a split, uint8 [N, H, W, 3]."""
    from wmplan.data.dataset import ClipDataset

    clips = ClipDataset(path, num_frames=1, frameskip=1, split=split)
    if len(clips) == 0:
        raise ValueError(f"dataset {path} has no frames in its {split!r} split")
    picks = np.sort(rng.choice(len(clips), size=min(max_frames, len(clips)), replace=False))
    return np.stack([np.asarray(clips[int(i)]["pixels"][0]) for i in picks])


def _new_vae(cfg: VAETrainConfig, resolution: int):
    from diffusers import AutoencoderKL

    levels = len(cfg.block_out_channels)
    if resolution % 2 ** (levels - 1):
        raise ValueError(f"frame size {resolution} is not divisible by the VAE's downsampling {2 ** (levels - 1)}")
    return AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=cfg.block_out_channels,
        layers_per_block=cfg.layers_per_block,
        latent_channels=cfg.latent_channels,
        norm_num_groups=cfg.norm_num_groups,
        sample_size=resolution,
    )


def _to_model(frames: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 [n, H, W, 3] -> float [n, 3, H, W] in [-1, 1]."""
    return torch.from_numpy(frames).to(device).permute(0, 3, 1, 2).float() / 127.5 - 1


def _fit(vae, frames: np.ndarray, cfg: VAETrainConfig, device: torch.device, resume: Path | None = None) -> None:
    """AdamW steps on random batches; every ``cfg.checkpoint_every`` steps the model, optimizer
    and generator go to ``resume`` (if given), from which a killed run continues bit for bit."""
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(cfg.seed)
    recon_fn = F.l1_loss if cfg.recon_loss == "l1" else F.mse_loss
    run_id = _run_id(cfg, frames)
    first = 1 if resume is None else _load_resume(resume, run_id, vae, opt, gen) + 1
    vae.train()
    for step in range(first, cfg.steps + 1):
        idx = torch.randint(len(frames), (cfg.batch_size,), generator=gen).numpy()
        x = _to_model(frames[idx], device)  # [b, 3, H, W]
        with autocast(cfg.precision, device):
            posterior = vae.encode(x).latent_dist
            noise = torch.randn(posterior.mean.shape, generator=gen).to(device)
            recon = vae.decode(posterior.mean + posterior.std * noise).sample
        rec = recon_fn(recon.float(), x)
        kl = posterior.kl().float().mean() / x[0].numel()  # per pixel, so kl_weight matches LDM's
        loss = rec + cfg.kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % cfg.log_every == 0 or step == cfg.steps:
            print(f"step {step}/{cfg.steps}  loss {loss.item():.4f}  {cfg.recon_loss} {rec.item():.4f}  kl {kl.item():.3f}")
        if resume is not None and cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < cfg.steps:
            save_resume_point(resume, run_id, step, vae=vae.state_dict(), optimizer=opt.state_dict(),
                              generator=gen.get_state())
    vae.eval()


def _run_id(cfg: VAETrainConfig, frames: np.ndarray) -> str:
    """What a resume point must match: the settings that shape training, and the frames."""
    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("log_every", "checkpoint_every")}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    digest.update(str(frames.shape).encode())
    digest.update(np.ascontiguousarray(frames[:: max(1, len(frames) // 64)]).tobytes())
    return digest.hexdigest()


def _load_resume(resume: Path, run_id: str, vae, opt: torch.optim.Optimizer, gen: torch.Generator) -> int:
    """Restore ``resume`` if it belongs to this run; returns the step it holds (0: none)."""
    state = load_resume_point(resume, run_id, "VAE training")
    if state is None:
        return 0
    vae.load_state_dict(state["vae"])
    opt.load_state_dict(state["optimizer"])
    gen.set_state(state["generator"])
    return int(state["step"])


@torch.no_grad()
def _unit_variance_scale(vae, frames: np.ndarray, cfg: VAETrainConfig, rng, device) -> float:
    """1 / std of the posterior means over a sample of training frames."""
    picks = rng.choice(len(frames), size=min(cfg.scale_frames, len(frames)), replace=False)
    chunks = np.array_split(picks, -(-len(picks) // 128))  # <= 128 frames per forward
    means = [vae.encode(_to_model(frames[chunk], device)).latent_dist.mean for chunk in chunks]
    return float(1.0 / torch.cat(means).std())


def _save(vae, out_dir: Path, val: np.ndarray) -> dict:
    """Write the model to a temporary folder, score it through build_codec, swap it in."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{out_dir.name}-", dir=out_dir.parent))
    try:
        vae.save_pretrained(tmp)
        codec = build_codec(CodecConfig(name="trained_vae", path=str(tmp), image_size=val.shape[1]))
        recon = codec.decode(codec.encode(torch.from_numpy(val)[None]))[0]  # [N, H, W, 3]
        result = {
            "psnr": round(float(psnr(recon, torch.from_numpy(val)).mean()), 3),
            "ssim": round(float(ssim(recon, torch.from_numpy(val)).mean()), 4),
            "scaling_factor": codec.scaling_factor,
            "val_frames": len(val),
        }
        (tmp / "wmplan_vae.json").write_text(json.dumps(result, indent=1))
        _replace_dir(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"saved {out_dir}: held-out PSNR {result['psnr']} dB, SSIM {result['ssim']}, scaling factor {result['scaling_factor']:.4f}")
    return result


def _replace_dir(src: Path, dst: Path) -> None:
    """Move a finished folder into place; an older one is moved aside first and removed after."""
    old = dst.with_name(f".old-{dst.name}-{os.getpid()}")
    if dst.exists():
        os.replace(dst, old)
    os.replace(src, dst)
    shutil.rmtree(old, ignore_errors=True)


@hydra.main(config_path=str(CONFIG_DIR), config_name="train_vae", version_base="1.3")
@reports_user_errors("wmplan-train-vae")
def main(cfg: DictConfig) -> None:
    tune_cpu_allocator()
    train_cfg = VAETrainConfig(**OmegaConf.to_container(cfg.train, resolve=True))
    print(json.dumps(train_vae(cfg.dataset, cfg.out_dir, train_cfg)))


if __name__ == "__main__":
    main()
