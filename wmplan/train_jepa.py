"""Train a JEPA world model (encoder + action-conditioned predictor, SIGReg) from pixels.

    wmplan-train-jepa env=wall dataset=data/wall train.steps=5000

Clips of ``model.history + 1`` frames come from a dataset written by ``wmplan-collect``
(``ClipDataset``). Loss: teacher-forced next-embedding MSE + ``sigreg_weight`` * SIGReg
(``wmplan.models.jepa``). Every ``checkpoint_every`` steps the model and optimizer go to a
resume point (``wmplan.checkpoint.save_resume_point``: tensors and plain values, written
atomically, loaded with ``weights_only``); a killed run continues from it bit for bit. The
result is a folder (``config.json`` + ``model.safetensors``) for the ``jepa`` codec (``latent=jepa``) and for planning (``wmplan-plan world_model=jepa:<folder>``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
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
from wmplan.hardware import autocast, check_precision, default_device, resolve_precision, tune_cpu_allocator
from wmplan.models.jepa import JEPA, JEPAConfig, jepa_loss, load_jepa, save_jepa
from wmplan.seeding import stream_seed



@dataclass
class JEPATrainConfig:
    steps: int = 5000
    batch_size: int = 32
    lr: float = 5e-4
    weight_decay: float = 0.05
    warmup_steps: int = 200  # linear warmup, then cosine to min_lr_ratio * lr
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    sigreg_weight: float = 0.1  # lambda
    sigreg_directions: int = 256  # random unit directions per step
    sigreg_knots: int = 17  # quadrature knots on [0, 3]
    proprio_weight: float = 1.0  # weight of the next-proprio MSE (models with model.proprio_dim > 0)
    probe_weight: float = 1.0  # weight of the pose probe's MSE (models with model.probe_dim > 0)
    val_fraction: float = 0.1
    split_seed: int = 0
    max_train_episodes: int | None = None  # keep only the first N train episodes (learning curves)
    val_clips: int = 256  # held-out clips for the final metrics
    scale_clips: int = 512  # training clips whose embeddings set the codec's scaling factor
    seed: int = 0
    device: str = "auto"  # auto (cuda, mps, else cpu) | cpu | cuda | mps
    precision: str = "auto"  # auto (bf16 where it runs natively and fast, see wmplan.hardware) | bf16 | fp32
    log_every: int = 100
    checkpoint_every: int = 250  # steps between resume points
    num_workers: int = 0  # processes loading batches ahead (0: the training process itself); same batches either way

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "sigreg_directions", "val_clips", "scale_clips", "log_every"):
            _check_int(name, getattr(self, name), 1)
        for name in ("warmup_steps", "checkpoint_every", "seed", "split_seed", "num_workers"):
            _check_int(name, getattr(self, name), 0)
        _check_int("sigreg_knots", self.sigreg_knots, 2)
        for name in ("lr", "weight_decay", "min_lr_ratio", "grad_clip", "sigreg_weight", "proprio_weight", "probe_weight",
                     "val_fraction"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or not math.isfinite(value):
                raise ValueError(f"train.{name} must be a finite number >= 0, got {value!r}")
        if self.batch_size < 2:
            raise ValueError(f"train.batch_size must be >= 2 (SIGReg tests a batch's distribution), got {self.batch_size}")
        if self.device not in ("auto", "cpu", "cuda", "mps") and not str(self.device).startswith("cuda:"):
            raise ValueError(f"train.device must be auto, cpu, cuda[:i] or mps, got {self.device!r}")
        if self.max_train_episodes is not None:
            _check_int("max_train_episodes", self.max_train_episodes, 1)
        self.precision = check_precision(self.precision)


def _check_int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"train.{name} must be an int >= {minimum}, got {value!r}")


def train_jepa(data: str | Path, out_dir: str | Path, model_cfg: dict, cfg: JEPATrainConfig | None = None,
               env: dict | None = None) -> dict:
    """Train on dataset ``data``, write the model folder ``out_dir``, return its metrics.

    ``model_cfg``: ``JEPAConfig`` fields; ``image_size`` and ``action_dim`` left None are read
    from the dataset. ``env``: optional ``{"id", "frameskip", "resolution"}`` the dataset must match."""
    from wmplan.data.dataset import ClipDataset, load_dataset_info

    cfg = cfg or JEPATrainConfig()
    info = load_dataset_info(data)
    frameskip = int(env["frameskip"]) if env else int(info["frameskip"])
    _check_dataset(data, info, env)
    pose_env, pose_width = _pose_env(info) if model_cfg.get("probe_dim", 0) != 0 else (None, None)
    model_cfg = _complete_model_config(model_cfg, info, frameskip, pose_width)
    clips = {split: ClipDataset(data, model_cfg.history + 1, frameskip, split, cfg.val_fraction, cfg.split_seed,
                                max_train_episodes=cfg.max_train_episodes if split == "train" else None)
             for split in ("train", "val")}
    device = torch.device(default_device() if cfg.device == "auto" else cfg.device)
    precision = resolve_precision(cfg.precision, device)
    torch.manual_seed(cfg.seed)
    model = JEPA(model_cfg).to(device)
    if model_cfg.proprio_dim:
        mean, std = clips["train"].proprio_stats()
        model.proprio_mean.copy_(torch.from_numpy(mean))
        model.proprio_std.copy_(torch.from_numpy(std))
    if model_cfg.probe_dim:
        pose = pose_env.pose_features(clips["train"].train_frames("states"))  # [F, probe_dim]
        model.pose_mean.copy_(torch.from_numpy(pose.mean(0)))
        model.pose_std.copy_(torch.from_numpy(pose_std(pose, pose_env.pose_groups)))
    action_mean, action_std = clips["train"].action_stats()  # planners sample in these units (sigma_units=data)
    clips = {split: PosedClips(c, pose_env) for split, c in clips.items()}
    start = time.perf_counter()
    out_dir = Path(out_dir)
    resume = out_dir.with_name(f".{out_dir.name}.resume.pt")
    run = _run_id(cfg, model_cfg, info, frameskip)
    last = _fit(model, clips["train"], cfg, device, precision, resume, run)
    _recalibrate_batchnorm(model, clips["train"], cfg, device)
    scale = _unit_variance_scale(model, clips["train"], cfg, device)
    metrics = {**_evaluate(model, clips["val"], cfg, device), "final_train": last, "scaling_factor": scale,
               "train_clips": len(clips["train"]), "seconds": round(time.perf_counter() - start, 1)}
    meta = {"scaling_factor": scale, "env": {"id": info["env_id"], "frameskip": frameskip, "resolution": info["resolution"]},
            "train": {**dataclasses.asdict(cfg), "precision": precision}, "dataset": str(data), "metrics": metrics,
            "action_stats": {"mean": action_mean.tolist(), "std": action_std.tolist()}}
    _save(model.cpu(), out_dir, meta)
    resume.unlink(missing_ok=True)
    return metrics


def _check_dataset(data, info: dict, env: dict | None) -> None:
    if env is None:
        return
    if info["env_id"] != env["id"]:
        raise ValueError(f"dataset {data} was collected on {info['env_id']}, config says {env['id']}")
    if int(info["resolution"]) != int(env["resolution"]):
        raise ValueError(f"dataset {data} has {info['resolution']} px frames, config says env.resolution={env['resolution']}")


def pose_std(pose: np.ndarray, groups: tuple[int, ...] | None) -> np.ndarray:
    """The probe's normalising scale [F] of pose features ``pose [N, F]``: each feature's std, or
    within each of ``groups`` (sizes of consecutive runs) their RMS; a constant one stays unscaled."""
    from wmplan.data.dataset import unit_where_constant

    std = pose.std(0)
    if groups is not None:
        std = np.concatenate([np.full(len(g), np.sqrt((g**2).mean())) for g in _split_groups(std, groups)])
    return unit_where_constant(std)


def _split_groups(features, groups: tuple[int, ...]) -> list:
    """``features [..., F]`` split along the last axis into consecutive runs of ``groups`` sizes."""
    if sum(groups) != features.shape[-1]:
        raise ValueError(f"pose_groups {tuple(groups)} do not cover the {features.shape[-1]} pose features")
    bounds = np.cumsum([0, *groups])
    return [features[..., a:b] for a, b in zip(bounds, bounds[1:])]


def _pose_env(info: dict) -> tuple:
    """(the dataset's env, whose ``pose_features`` are the pose probe's targets, their width)."""
    from wmplan.envs import make

    env = make(info["env_id"]).unwrapped
    try:
        width = env.pose_features(np.zeros(int(info["state_dim"]))).shape[-1]
    except NotImplementedError as e:
        raise ValueError(f"model.probe_dim: {e}") from None
    return env, width


class PosedClips:
    """A ``ClipDataset`` whose items also carry ``pose`` float32 [T, F], the env's pose features
    of the clip's states (zero-width without a pose env)."""

    def __init__(self, clips, pose_env=None):
        self.clips, self.pose_env = clips, pose_env

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> dict:
        item = self.clips[index]
        states = item["states"]
        pose = self.pose_env.pose_features(states) if self.pose_env else np.zeros((len(states), 0))
        return {**item, "pose": pose.astype(np.float32)}


def _complete_model_config(model_cfg: dict, info: dict, frameskip: int, pose_width: int | None = None) -> JEPAConfig:
    """Fill ``image_size`` / ``action_dim`` (and ``proprio_dim`` / ``probe_dim`` when null) from
    the dataset and its env, and check explicit ones against them; ``proprio_dim`` 0 trains on
    pixels alone, ``probe_dim`` 0 without a pose probe."""
    fields = dict(model_cfg)
    unknown = set(fields) - {f.name for f in dataclasses.fields(JEPAConfig)}
    if unknown:
        raise ValueError(f"unknown JEPA model settings {sorted(unknown)}")
    data = {"image_size": int(info["resolution"]), "action_dim": int(info["action_dim"]) * frameskip}
    if fields.get("proprio_dim", 0) != 0:
        data["proprio_dim"] = int(info["proprio_dim"])
    if pose_width is not None:
        data["probe_dim"] = int(pose_width)
    for key, value in data.items():
        if fields.get(key) is None:
            fields[key] = value
        elif fields[key] != value:
            raise ValueError(f"model.{key}={fields[key]} contradicts the dataset, which needs {value}")
    return JEPAConfig(**fields)


def _batch(clips, idx: np.ndarray) -> tuple[torch.Tensor, ...]:
    """pixels uint8 [B, T, H, W, 3], actions float32 [B, T-1, Aw], proprio float32 [B, T, P] and
    pose features float32 [B, T, F] of clips ``idx``."""
    return _collate([clips[int(i)] for i in idx])


def _collate(items: list[dict]) -> tuple[torch.Tensor, ...]:
    return tuple(torch.from_numpy(np.stack([x[key] for x in items])) for key in ("pixels", "actions", "proprio", "pose"))


def _step_draws(cfg: JEPATrainConfig, step: int, num_clips: int) -> tuple[torch.Generator, np.ndarray]:
    """Step ``step``'s clip indices [batch_size] and the generator, advanced past them, that
    draws its SIGReg directions: both from (seed, step) alone."""
    gen = torch.Generator().manual_seed(stream_seed(cfg.seed, step))
    return gen, torch.randint(num_clips, (cfg.batch_size,), generator=gen).numpy()


class _StepBatches(torch.utils.data.Sampler):
    """The clip indices of steps ``first..cfg.steps``, for a DataLoader's ``batch_sampler``."""

    def __init__(self, cfg: JEPATrainConfig, first: int, num_clips: int):
        self.cfg, self.first, self.num_clips = cfg, first, num_clips

    def __len__(self) -> int:
        return max(0, self.cfg.steps + 1 - self.first)

    def __iter__(self):
        for step in range(self.first, self.cfg.steps + 1):
            yield _step_draws(self.cfg, step, self.num_clips)[1].tolist()


def _batches(clips, cfg: JEPATrainConfig, first: int):
    """The batches of steps ``first..cfg.steps`` in order; ``num_workers`` processes load them ahead
    (a GPU would otherwise wait on the CPU: 256 PushT clips take ~0.3 s on one busy core)."""
    return iter(torch.utils.data.DataLoader(clips, batch_sampler=_StepBatches(cfg, first, len(clips)),
                                            num_workers=cfg.num_workers, collate_fn=_collate,
                                            prefetch_factor=4 if cfg.num_workers else None))


def _lr(cfg: JEPATrainConfig, step: int) -> float:
    """Learning rate of (1-based) ``step``: linear warmup, then cosine down to min_lr_ratio * lr."""
    if step <= cfg.warmup_steps:
        return cfg.lr * step / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def _step(model: JEPA, opt: torch.optim.Optimizer, batch: tuple[torch.Tensor, ...], num_clips: int,
          cfg: JEPATrainConfig, step: int, device: torch.device, precision: str) -> dict[str, float]:
    """One optimizer step on ``batch`` (``_batches``); its SIGReg directions come from (seed, step) alone."""
    gen, _ = _step_draws(cfg, step, num_clips)
    pixels, actions, proprio, pose = batch
    for group in opt.param_groups:
        group["lr"] = _lr(cfg, step)
    with autocast(precision, device):
        loss, stats = jepa_loss(model, pixels.to(device), actions.to(device), cfg.sigreg_weight,
                                cfg.sigreg_directions, cfg.sigreg_knots, generator=gen,
                                proprio=proprio.to(device), proprio_weight=cfg.proprio_weight,
                                pose=pose.to(device), probe_weight=cfg.probe_weight)
    if not torch.isfinite(loss):
        raise FloatingPointError(f"non-finite JEPA loss at step {step}: {stats}")
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    opt.step()
    return stats


def _fit(model: JEPA, clips, cfg: JEPATrainConfig, device: torch.device, precision: str,
         resume: Path, run: str) -> dict[str, float]:
    """AdamW steps from the last resume point of this run (or step 1); returns the last step's stats."""
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    first = _load_resume(resume, run, model, opt) + 1
    model.train()
    stats: dict[str, float] = {}
    for step, batch in zip(range(first, cfg.steps + 1), _batches(clips, cfg, first)):
        stats = _step(model, opt, batch, len(clips), cfg, step, device, precision)
        if step % cfg.log_every == 0 or step == cfg.steps:
            print(f"step {step}/{cfg.steps}  " + "  ".join(f"{k} {v:.4f}" for k, v in stats.items()))
        if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < cfg.steps:
            save_resume_point(resume, run, step, model=model.state_dict(), optimizer=opt.state_dict())
    model.eval()
    return stats


def _run_id(cfg: JEPATrainConfig, model_cfg: JEPAConfig, info: dict, frameskip: int) -> str:
    """What a resume point must match: the settings that shape training, and the dataset."""
    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("log_every", "checkpoint_every", "num_workers")}
    data = {k: info[k] for k in ("env_id", "resolution", "seed", "policy", "num_episodes", "num_steps", "frame_stride")
            if k in info}  # frame_stride only where set: older runs keep their id
    blob = json.dumps([settings, dataclasses.asdict(model_cfg), data, frameskip], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _load_resume(path: Path, run: str, model: JEPA, opt: torch.optim.Optimizer) -> int:
    """Restore ``path`` if it belongs to this run; returns the step it holds (0: none)."""
    state = load_resume_point(path, run, "JEPA training")
    if state is None:
        return 0
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    return int(state["step"])


def _sample(clips, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(len(clips), size=min(n, len(clips)), replace=False))


@torch.no_grad()
def _embeddings(model: JEPA, clips, idx: np.ndarray, device: torch.device) -> tuple[torch.Tensor, ...]:
    """(z [n, T, K, D], actions [n, T-1, Aw], raw proprio [n, T, P], raw pose features [n, T, F])
    of clips ``idx``, in float32, 64 clips per forward."""
    zs, rest = [], []
    for chunk in np.array_split(idx, -(-len(idx) // 64)):
        pixels, *others = _batch(clips, chunk)
        zs.append(model.encode_clips(pixels.to(device)).float().cpu())
        rest.append(others)
    return (torch.cat(zs), *(torch.cat(column) for column in zip(*rest)))


@torch.no_grad()
def _recalibrate_batchnorm(model: JEPA, clips, cfg: JEPATrainConfig, device: torch.device) -> None:
    """Recompute the projector's BatchNorm running statistics for the final weights (a plain
    average over ``scale_clips`` training clips): the ones tracked during training lag behind
    fast-moving weights, and eval mode (the codec, planning) uses them."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [bn.momentum for bn in norms]
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the batches below
    model.train()
    _embeddings(model, clips, _sample(clips, cfg.scale_clips, cfg.seed), device)
    for bn, momentum in zip(norms, momenta):
        bn.momentum = momentum
    model.eval()


@torch.no_grad()
def _unit_variance_scale(model: JEPA, clips, cfg: JEPATrainConfig, device: torch.device) -> float:
    """1 / std of the embeddings of a sample of training clips (SIGReg keeps it near 1)."""
    z = _embeddings(model, clips, _sample(clips, cfg.scale_clips, cfg.seed), device)[0]
    return float(1.0 / z.std().clamp_min(1e-8))


@torch.no_grad()
def _evaluate(model: JEPA, clips, cfg: JEPATrainConfig, device: torch.device) -> dict[str, float]:
    """Held-out next-embedding MSE against copying the last embedding, and SIGReg (and the
    normalised next-proprio MSE against copy-last, for models that read proprio; and the pose
    probe's RMSE in the env's units, per feature or per the env's ``pose_groups`` (a layout grid),
    on encoded and on predicted embeddings)."""
    from wmplan.models.jepa import sigreg

    z, actions, proprio, pose = _embeddings(model, clips, _sample(clips, cfg.val_clips, cfg.seed + 1), device)
    p = model.normalize_proprio(proprio.to(device)).cpu() if model.cfg.proprio_dim else None  # [n, T, P]
    pred, pred_p = model.predict(z[:, :-1].to(device), actions.to(device), None if p is None else p[:, :-1].to(device))
    gen = torch.Generator().manual_seed(cfg.seed)
    reg = sigreg(z.flatten(2).transpose(0, 1), cfg.sigreg_directions, cfg.sigreg_knots, generator=gen)
    metrics = {"val_pred_mse": round(F.mse_loss(pred.float().cpu(), z[:, 1:]).item(), 6),
               "val_copy_last_mse": round(F.mse_loss(z[:, :-1], z[:, 1:]).item(), 6),
               "val_sigreg": round(reg.item(), 4), "val_clips": len(z)}
    if p is not None:
        metrics["val_proprio_mse"] = round(F.mse_loss(pred_p.float().cpu(), p[:, 1:]).item(), 6)
        metrics["val_proprio_copy_last_mse"] = round(F.mse_loss(p[:, :-1], p[:, 1:]).item(), 6)
    if model.probe is not None:
        groups = clips.pose_env.pose_groups

        def rmse(read: torch.Tensor, true: torch.Tensor) -> list[float]:
            square = (read.cpu() - true).square().flatten(0, -2)  # [n, F]
            if groups is not None:  # a layout grid (Rope, Granular): one RMSE over each grid's cells
                return [round(g.mean().sqrt().item(), 5) for g in _split_groups(square, groups)]
            return [round(x, 4) for x in square.mean(0).sqrt().tolist()]

        metrics["val_probe_rmse"] = rmse(model.read_pose(z.to(device)), pose)
        metrics["val_probe_predicted_rmse"] = rmse(model.read_pose(pred.float()), pose[:, 1:])
    return metrics


def _save(model: JEPA, out_dir: Path, meta: dict) -> None:
    """Write the folder next to ``out_dir``, check it loads back equal, swap it in."""
    from wmplan.train_vae import _replace_dir

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{out_dir.name}-", dir=out_dir.parent))
    try:
        save_jepa(model, tmp, meta)
        loaded, _ = load_jepa(tmp)
        for key, value in model.state_dict().items():
            if not torch.equal(loaded.state_dict()[key], value):
                raise RuntimeError(f"saved JEPA weight {key} did not load back equal")
        _replace_dir(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    m = meta["metrics"]
    print(f"saved {out_dir}: held-out next-embedding MSE {m['val_pred_mse']} (copy-last {m['val_copy_last_mse']}), "
          f"SIGReg {m['val_sigreg']}, scaling factor {meta['scaling_factor']:.4f}")


@hydra.main(config_path=str(CONFIG_DIR), config_name="train_jepa", version_base="1.3")
@reports_user_errors("wmplan-train-jepa")
def main(cfg: DictConfig) -> None:
    tune_cpu_allocator()
    train_cfg = JEPATrainConfig(**OmegaConf.to_container(cfg.train, resolve=True))
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    env = {"id": cfg.env.id, "frameskip": cfg.env.frameskip, "resolution": cfg.env.resolution}
    print(json.dumps(train_jepa(cfg.dataset, cfg.out_dir, model_cfg, train_cfg, env)))


if __name__ == "__main__":
    main()
