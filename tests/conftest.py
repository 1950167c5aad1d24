"""Shared, expensive fixtures: a tiny Wall dataset and one trained tiny world model.

Sizes are chosen so that training, rollout and planning tests run in seconds on one core:
Wall at 16 px, 6 episodes of 20 steps, ``model=tiny`` on 8x8 pixel latents, 3-frame clips.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

import wmplan.train
from wmplan.config_dir import CONFIG_DIR
from wmplan.data.collect import collect
from wmplan.envs.config import load_env_config

RESOLUTION = 16
# data.val_fraction=0.3 puts episode 2 of 6 (split seed 0) in the val split.
TRAIN_OVERRIDES = (
    "model=tiny", "latent=pixels", "latent.pixel_size=8", f"env.resolution={RESOLUTION}",
    "data.num_frames=3", "data.val_fraction=0.3",
    "training.batch_size=2", "training.warmup_steps=1", "training.accelerator=cpu",
    "validation.every_n_steps=2", "validation.num_clips=2", "validation.batch_size=2",
    "validation.num_batches=1", "validation.sampler.steps=2",
    "checkpoint.every_n_steps=2", "logging.log_every=1", "logging.progress_every=0",
)


def compose_config(name: str, overrides: list[str] | tuple[str, ...]):
    """A config composed by Hydra from the repo's real config files."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(name, overrides=list(overrides))


def train_config(data: Path, out_dir: Path, max_steps: int, *extra: str):
    return compose_config("train", [*TRAIN_OVERRIDES, f"data.path={data}", f"out_dir={out_dir}",
                                    f"training.max_steps={max_steps}", *extra])


@pytest.fixture(scope="session")
def wall_data(tmp_path_factory) -> Path:
    """Six random-policy Wall episodes at 16 px."""
    env_cfg = load_env_config("wall", resolution=RESOLUTION, episode_length=20)
    return collect(env_cfg, 6, "random", 0, tmp_path_factory.mktemp("data") / "wall", progress=False)


@pytest.fixture(scope="session")
def trained_run(wall_data, tmp_path_factory) -> Path:
    """out_dir of a 4-step training run of the tiny model (default precision, bf16-mixed)."""
    out = tmp_path_factory.mktemp("train") / "run"
    wmplan.train.train(train_config(wall_data, out, 4))
    return out


@pytest.fixture(scope="session")
def checkpoint(trained_run) -> Path:
    return trained_run / "checkpoints" / "latest.ckpt"
