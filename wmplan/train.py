"""``wmplan-train``: train a NanoWM world model on a collected dataset (Hydra + Lightning).

    wmplan-train env=wall data.path=data/wall model=mini training.max_steps=2000

Runs resume from ``<out_dir>/checkpoints/latest.ckpt`` when it exists (same step,
optimizer, EMA, RNG and batch stream). Multi-GPU / multi-node runs only change
``training.devices``, ``training.num_nodes`` and ``training.strategy`` (DDP via Lightning).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

import hydra
import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, TQDMProgressBar
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info
from torch.utils.data._utils.collate import default_collate

from wmplan.checkpoint import read_checkpoint
from wmplan.cli import check_numbers, reports_user_errors
from wmplan.config_dir import CONFIG_DIR as _CONFIG_DIR
from wmplan.data.dataset import ClipDataset, load_dataset_info, validation_subset
from wmplan.hardware import lightning_precision, tune_cpu_allocator
from wmplan.models.codecs import CodecConfig, LatentCodec, build_codec
from wmplan.module import WorldModelModule

CONFIG_DIR = str(_CONFIG_DIR)  # wmplan/configs, as the absolute string hydra.main needs


class StepBatches(IterableDataset):
    """Endless batch stream where batch k depends only on (seed, k, rank).

    Starting at ``start`` after a resume yields exactly the batches the uninterrupted run
    would have seen; with several loader workers, worker w produces batches w, w+n, ...,
    which the DataLoader interleaves back into order.
    """

    def __init__(self, dataset: Dataset, batch_size: int, seed: int, start: int = 0, rank: int = 0):
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self.start, self.rank = start, rank

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        step = self.start + worker
        while True:
            rng = np.random.default_rng([self.seed, step, self.rank])
            idx = rng.integers(0, len(self.dataset), self.batch_size)
            yield default_collate([self.dataset[int(i)] for i in idx])
            step += workers


class StreamPosition(Callback):
    """Places a ``StepBatches`` stream: this process's global rank, and on a resume the step
    the checkpoint stopped at (read from the checkpoint Lightning loads, not loaded again).

    The rank is set in ``setup``, once the strategy knows it: ``ddp_fork`` / ``ddp_notebook``
    build the trainer once, as rank 0, and fork the ranks from it, so a rank read at build time
    made every rank train on rank 0's batches. Both hooks run before the first batch is drawn.
    """

    def __init__(self, stream: StepBatches, accumulate: int):
        self.stream, self.accumulate = stream, accumulate

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.stream.rank = trainer.global_rank

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        self.stream.start = int(checkpoint["global_step"]) * self.accumulate


class AtomicCheckpoints(Callback):
    """``latest.ckpt`` every N steps (atomic replace) plus periodic snapshots."""

    def __init__(self, directory: str | Path, every_n_steps: int, snapshot_every_n_steps: int):
        self.dir = Path(directory)
        self.every, self.snapshot_every = every_n_steps, snapshot_every_n_steps
        self.last_step = -1

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        step = trainer.global_step
        if step == self.last_step:  # gradient accumulation: no optimizer step happened
            return
        self.last_step = step
        if self.every and step % self.every == 0:
            self.save(trainer, "latest.ckpt")
        if self.snapshot_every and step % self.snapshot_every == 0:
            self.save(trainer, f"step{step:07d}.ckpt")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.save(trainer, "latest.ckpt")

    def save(self, trainer: L.Trainer, name: str) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        final, tmp = self.dir / name, self.dir / f".{name}.tmp"
        # A resume point keeps the optimizer and loop state (weights_only=False). Every value is a
        # tensor or plain container still, so it loads with torch.load(weights_only=True).
        trainer.save_checkpoint(tmp, weights_only=False)  # every rank must call; rank 0 writes
        if trainer.is_global_zero:
            os.replace(tmp, final)
        return final


def build_datasets(cfg: DictConfig, codec: LatentCodec) -> tuple[Dataset, Dataset]:
    """Train / val clip datasets; with ``data.latent_cache`` the frames are encoded once."""
    d = cfg.data
    kwargs = dict(num_frames=d.num_frames, frameskip=cfg.env.frameskip, val_fraction=d.val_fraction, seed=d.split_seed)
    train = ClipDataset(d.path, split="train", max_train_episodes=d.max_train_episodes, **kwargs)
    val = ClipDataset(d.path, split="val", **kwargs)
    if d.latent_cache:
        from wmplan.data.latent_cache import LatentClipDataset

        train = LatentClipDataset(train, codec, keep_pixels=False)
        val = LatentClipDataset(val, codec, keep_pixels=True)
    return train, val


def complete_config(cfg: DictConfig, codec: LatentCodec) -> DictConfig:
    """Fill the model's data-dependent sizes (latent shape, action / proprio dims)."""
    info = load_dataset_info(cfg.data.path)
    if info["env_id"] != cfg.env.id:
        raise ValueError(f"dataset {cfg.data.path} was collected on {info['env_id']}, config says {cfg.env.id}")
    if info.get("action_free") and cfg.diffusion.action_dropout < 1:  # its zeros are not a real action
        raise ValueError(f"dataset {cfg.data.path} is action-free (wmplan-import video): pretrain on it with "
                         "diffusion.action_dropout=1, which hides every frame's action from the model")
    channels, height, width = codec.latent_shape
    OmegaConf.set_struct(cfg, False)
    cfg.model.latent_channels = channels
    cfg.model.latent_size = height
    cfg.model.action_dim = int(info["action_dim"]) * int(cfg.env.frameskip)
    cfg.model.proprio_dim = int(info["proprio_dim"]) if cfg.data.use_proprio else 0
    return cfg


def build_trainer(cfg: DictConfig, out_dir: Path) -> L.Trainer:
    t = cfg.training
    loggers: list = [TensorBoardLogger(str(out_dir), name="tb", version="")]
    if cfg.logging.wandb:
        from lightning.pytorch.loggers import WandbLogger

        loggers.append(WandbLogger(project=cfg.logging.wandb_project, save_dir=str(out_dir), offline=cfg.logging.wandb_offline))
    callbacks = [
        AtomicCheckpoints(out_dir / "checkpoints", cfg.checkpoint.every_n_steps, cfg.checkpoint.snapshot_every_n_steps),
        TQDMProgressBar(refresh_rate=cfg.logging.progress_every),
    ]
    return L.Trainer(
        max_steps=t.max_steps, accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes,
        strategy=t.strategy, precision=lightning_precision(t.precision, t.accelerator),
        accumulate_grad_batches=t.accumulate_grad_batches, val_check_interval=cfg.validation.every_n_steps * t.accumulate_grad_batches,
        check_val_every_n_epoch=None, limit_val_batches=cfg.validation.num_batches, num_sanity_val_steps=0,
        logger=loggers, callbacks=callbacks, enable_checkpointing=False, log_every_n_steps=cfg.logging.log_every,
        default_root_dir=str(out_dir), deterministic=False, enable_model_summary=cfg.logging.model_summary,
    )


TRAIN_INTS = {"training.batch_size": 1, "training.max_steps": 1, "training.accumulate_grad_batches": 1,
              "training.warmup_steps": 0, "training.num_workers": 0, "training.seed": 0, "data.num_frames": 2,
              "checkpoint.every_n_steps": 0, "checkpoint.snapshot_every_n_steps": 0, "validation.every_n_steps": 1,
              "validation.num_clips": 1, "validation.batch_size": 1, "validation.num_batches": 0,
              "validation.num_prediction_batches": 0}
TRAIN_FLOATS = ("training.lr", "training.min_lr_ratio", "training.weight_decay", "training.grad_clip",
                "training.ema_decay", "data.val_fraction")


def init_weights(module: WorldModelModule, checkpoint: str, transfer: str | None) -> None:
    """Start ``module`` (model and EMA) from ``checkpoint``'s EMA weights, causalized with
    ``transfer`` (Vid2World: a non-causal, e.g. action-free, pretrained model made causal
    before post-training with actions). The architectures must agree but for ``causal``."""
    from wmplan.models.causalize import causalize
    from wmplan.rollout import WorldModel

    model = WorldModel.from_checkpoint(checkpoint).module.ema.module
    if transfer is not None:
        causalize(model, transfer)
    mine, theirs = vars(module.model.cfg), vars(model.cfg)
    differ = sorted(k for k in mine if mine[k] != theirs.get(k))
    if differ:
        fix = " (training.causalize makes a non-causal model causal)" if "causal" in differ else ""
        raise ValueError(f"training.init_from={checkpoint}: its model differs from this run's in "
                         f"{', '.join(f'{k} ({theirs.get(k)} vs {mine[k]})' for k in differ)}{fix}")
    module.model.load_state_dict(model.state_dict())
    module.ema.module.load_state_dict(model.state_dict())


def train(cfg: DictConfig) -> Path:
    """Train (or resume) a world model; returns the path of ``latest.ckpt``."""
    check_numbers(cfg, TRAIN_INTS, TRAIN_FLOATS)
    if cfg.training.causalize is not None and cfg.training.init_from is None:
        raise ValueError("training.causalize needs training.init_from, the non-causal model to start from")
    L.seed_everything(cfg.training.seed, workers=True)
    tune_cpu_allocator()
    torch.set_float32_matmul_precision("high")
    out_dir = Path(cfg.out_dir)
    codec = build_codec(CodecConfig(**cfg.latent))
    cfg = complete_config(cfg, codec)
    train_set, val_set = build_datasets(cfg, codec)
    clips = getattr(train_set, "clips", train_set)  # the ClipDataset under a latent cache
    # Recorded with the model: planners can sample in these units (wmplan-plan sigma_units=data).
    cfg.data.action_mean, cfg.data.action_std = (x.tolist() for x in clips.action_stats())
    module = WorldModelModule(cfg, codec=codec)
    latest = out_dir / "checkpoints" / "latest.ckpt"
    resume = latest if cfg.checkpoint.resume and latest.exists() else None
    if resume is None:
        if cfg.model.proprio_dim:  # imported video may have none
            module.set_proprio_stats(*clips.proprio_stats())
        if cfg.training.init_from is not None:  # a resumed run has its own weights
            init_weights(module, cfg.training.init_from, cfg.training.causalize)
    else:  # refused here, with a clear message, if it is not a safe wmplan checkpoint
        read_checkpoint(resume, mmap=True)
    trainer = build_trainer(cfg, out_dir)
    t = cfg.training
    stream = StepBatches(train_set, t.batch_size, t.seed)
    trainer.callbacks.append(StreamPosition(stream, t.accumulate_grad_batches))  # rank and resume step
    train_loader = DataLoader(stream, batch_size=None, num_workers=t.num_workers, persistent_workers=t.num_workers > 0)
    val_loader = DataLoader(
        validation_subset(val_set, cfg.validation.num_clips, cfg.validation.seed),
        batch_size=cfg.validation.batch_size, shuffle=False, num_workers=0,
    )
    trainer.fit(module, train_loader, val_loader, ckpt_path=str(resume) if resume else None, weights_only=True)
    return latest


@hydra.main(config_path=CONFIG_DIR, config_name="train", version_base="1.3")
@reports_user_errors("wmplan-train")
def main(cfg: DictConfig) -> None:
    print(f"wmplan-train: checkpoint at {train(cfg)}")


if __name__ == "__main__":
    main()
