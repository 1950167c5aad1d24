"""Collect episodes into a resumable wmplan dataset (Minari shards); the ``wmplan-collect`` CLI.

    wmplan-collect env=wall episodes=1920 policy=random seed=0 out_dir=data/wall

``frame_stride=n`` stores only every n-th frame (env steps 0, n, 2n, ...; n divides the env's
frameskip): ``n = frameskip`` keeps exactly the frames a model trains on, in 1/n of the disk.
Actions, proprio and states are still stored at every env step.

Episode ``i`` is generated from ``SeedSequence([seed, i])`` alone (env reset seed and policy
generator), at env-step granularity, so rerunning the same command after an interruption
continues where it stopped and yields exactly the dataset an uninterrupted run would.

Storage format, and why. Episodes are stored with Minari (HDF5 backend, lossless pixels),
but not as one growing Minari dataset: appending to one in place is not crash safe.
Measured here (30 SIGKILLs at random times into a process appending 64-px, 50-step
episodes with ``update_episodes``): 1 run left ``main_data.hdf5`` unreadable (every
episode lost), 2 left Minari's ``metadata.json`` empty (it is rewritten in place, so the
dataset no longer loads) and 4 left it disagreeing with the HDF5 file. So a dataset is a
sequence of *immutable shards*, each a complete Minari dataset of up to ``shard_episodes``
episodes, written into a hidden temporary directory and renamed into place once complete
(see ``wmplan.data.dataset`` for the layout). Consequences:
- a committed shard is never modified again, so nothing already written can be damaged;
- on an exception or Ctrl-C the episodes finished so far are committed before exiting;
  a hard kill (SIGKILL, power loss) loses at most the uncommitted episodes of the current
  shard, which the rerun regenerates identically (leftover temporaries are discarded);
- no whole-file copies or verification passes are needed, and a reader never sees a
  partial shard.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import gymnasium as gym
import hydra
import minari
import numpy as np
from minari.data_collector import EpisodeBuffer
from minari.dataset.minari_storage import MinariStorage
from omegaconf import DictConfig
from tqdm import tqdm

import wmplan
from wmplan.atomic import fsync_path, write_json_atomic
from wmplan.cli import reports_user_errors
from wmplan.config_dir import CONFIG_DIR
from wmplan.data.dataset import (
    FORMAT,
    INFO_FILE,
    SHARD_DIR,
    frame_stride_of,
    list_shards,
    load_dataset_info,
    read_info,
)
from wmplan.data.policies import make_policy
from wmplan.envs.config import EnvConfig

_VERSION_KEYS = ("wmplan_version",)  # may differ between a run and its resumption


def collect(
    env_cfg: EnvConfig,
    episodes: int,
    policy: str,
    seed: int,
    out_dir: str | os.PathLike,
    shard_episodes: int = 32,
    progress: bool = True,
    frame_stride: int = 1,
) -> Path:
    """Make ``out_dir`` hold episodes ``[0, episodes)``, collecting only those still missing.

    ``frame_stride``: store every n-th frame only (n must divide ``env_cfg.frameskip``).
    Returns the dataset path. Raises ``ValueError`` if ``out_dir`` holds something else: a
    foreign directory, or a dataset collected with other settings.
    """
    for name, value, least in (("episodes", episodes, 0), ("seed", seed, 0), ("shard_episodes", shard_episodes, 1),
                               ("frame_stride", frame_stride, 1)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < least:
            raise ValueError(f"{name} must be an int >= {least}, got {value!r}")
    if env_cfg.frameskip % frame_stride:
        raise ValueError(f"frame_stride={frame_stride} must divide the env's frameskip ({env_cfg.frameskip}): "
                         "the frames a model trains on are frameskip env steps apart")
    out = Path(out_dir).absolute()
    env = env_cfg.make()
    try:
        make_policy(policy, env, np.random.default_rng(0))  # fail on a bad policy/env pair before writing
        info = _dataset_info(env_cfg, env, policy, seed, int(frame_stride))
        done = _prepare(out, info)
        bar = tqdm(total=max(episodes, done), initial=done, disable=not progress, desc=f"collect {env_cfg.name}")
        with bar:
            _collect_range(env, info, out, done, episodes, shard_episodes, bar)
    finally:
        env.close()
    return out


def _collect_range(env: gym.Env, info: dict, out: Path, start: int, stop: int, shard_episodes: int, bar: tqdm) -> None:
    """Collect episodes ``[start, stop)``, committing a shard every ``shard_episodes``."""

    def episodes() -> Iterator[EpisodeBuffer]:
        for i in range(start, stop):
            yield _run_episode(env, info["policy"], info["seed"], i, frame_stride_of(info))
            bar.update(1)

    write_in_shards(episodes(), out, start, shard_episodes, env, info)


def write_in_shards(episodes: Iterable[EpisodeBuffer], out: Path, start: int, shard_episodes: int,
                    spaces: Any, info: dict) -> None:
    """Commit ``episodes`` (the dataset's episodes from index ``start`` on) as shards of
    ``shard_episodes``; on an exception or Ctrl-C the episodes already finished are committed
    too. ``spaces`` has the dataset's ``observation_space`` and ``action_space`` (an env)."""
    pending: list[EpisodeBuffer] = []
    try:
        for episode in episodes:
            pending.append(episode)
            if len(pending) == shard_episodes:
                batch, pending = pending, []
                _write_shard(out, start, batch, spaces, info)
                start += len(batch)
    finally:
        if pending:
            _write_shard(out, start, pending, spaces, info)


def _dataset_info(env_cfg: EnvConfig, env: gym.Env, policy: str, seed: int, frame_stride: int) -> dict:
    """The dataset's ``wmplan.json``: everything needed to reproduce and interpret it
    (``frame_stride`` only when it is not 1, so datasets from before it existed still resume)."""
    info = {
        "format": FORMAT,
        "env": env_cfg.name,
        "env_id": env_cfg.id,
        "env_version": gym.spec(env_cfg.id).version,
        "env_kwargs": env_cfg.env_kwargs,
        "resolution": env_cfg.resolution,
        "frameskip": env_cfg.frameskip,
        "history": env_cfg.history,
        "episode_length": env_cfg.episode_length,
        "policy": policy,
        "seed": int(seed),
        "wmplan_version": wmplan.__version__,
        "action_dim": int(env.action_space.shape[0]),
        "proprio_dim": int(env.observation_space["proprio"].shape[0]),
        "state_dim": int(env.unwrapped.state_dim),
        **({"frame_stride": frame_stride} if frame_stride > 1 else {}),
    }
    return json.loads(json.dumps(info))  # the form it takes on disk, so comparisons are exact


def _prepare(out: Path, info: dict) -> int:
    """Create ``out`` or check that it continues the same collection; episodes already there."""
    if not (out / INFO_FILE).exists():
        # Tolerate only what a run killed while creating the dataset leaves: nothing, or a temp file.
        entries = list(out.iterdir()) if out.is_dir() else [out] if out.exists() else []
        if any(not p.name.startswith(f".{INFO_FILE}.tmp") for p in entries):
            raise ValueError(f"{out} exists and is not a wmplan dataset; refusing to write into it")
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / INFO_FILE, info)
    existing = read_info(out)
    keys = (info.keys() | existing.keys()) - set(_VERSION_KEYS)
    differ = sorted(k for k in keys if info.get(k) != existing.get(k))
    if differ:
        detail = ", ".join(f"{k}: {existing.get(k)!r} on disk vs {info.get(k)!r} now" for k in differ)
        raise ValueError(f"{out} holds a dataset collected with other settings ({detail})")
    (out / SHARD_DIR).mkdir(exist_ok=True)
    for tmp in (out / SHARD_DIR).glob(".*"):  # shards a killed run never committed
        shutil.rmtree(tmp)
    shards = list_shards(out, existing)
    return shards[-1][1] if shards else 0


def _run_episode(env: gym.Env, policy_name: str, seed: int, index: int, frame_stride: int = 1) -> EpisodeBuffer:
    """Play episode ``index`` to its time limit; everything random comes from ``(seed, index)``.
    Pixels are kept at env steps ``0, frame_stride, ...``; everything else at every step."""
    env_seq, policy_seq = np.random.SeedSequence([seed, index]).spawn(2)
    env_seed = int(env_seq.generate_state(1)[0])
    policy = make_policy(policy_name, env, np.random.default_rng(policy_seq))
    obs, info = env.reset(seed=env_seed)
    policy.reset(obs, info)
    pixels, proprio, states, actions = [obs["pixels"]], [obs["proprio"]], [info["state"]], []
    terminated = truncated = False
    terminations, truncations = [], []
    while not (terminated or truncated):
        # Store the action the env applies: it clips into the action box.
        action = np.clip(policy(obs, info), env.action_space.low, env.action_space.high).astype(np.float32)
        obs, _, terminated, truncated, info = env.step(action)
        actions.append(action)
        pixels.append(obs["pixels"])
        proprio.append(obs["proprio"])
        states.append(info["state"])
        terminations.append(terminated)
        truncations.append(truncated)
    return EpisodeBuffer(
        seed=env_seed,
        # pixels [L // frame_stride + 1, ...], proprio [L+1, P]: Minari stores each key as its own array
        observations={"pixels": np.stack(pixels[::frame_stride]), "proprio": np.stack(proprio).astype(np.float32)},
        actions=np.stack(actions),  # [L, A]
        rewards=np.zeros(len(actions)),
        terminations=np.array(terminations),
        truncations=np.array(truncations),
        infos={"state": np.stack(states).astype(np.float64)},  # [L+1, S]
    )


def _write_shard(out: Path, start: int, episodes: list[EpisodeBuffer], env: gym.Env, info: dict) -> None:
    """Write episodes ``[start, start + len)`` as one Minari dataset, then rename it into place."""
    name = f"{start:08d}-{start + len(episodes):08d}"
    final, tmp = out / SHARD_DIR / name, out / SHARD_DIR / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    storage = MinariStorage.new(
        tmp,
        observation_space=env.observation_space,
        action_space=env.action_space,
        data_format="hdf5",
        jpeg_encoding=False,  # lossless: world models are scored on pixels
    )
    storage.update_metadata(
        {
            "dataset_id": f"wmplan/{info['env']}-{name}",
            "minari_version": minari.__version__,
            "algorithm_name": info["policy"],
            "description": f"wmplan {info['env']} episodes {name} (see {INFO_FILE} one level up)",
            "wmplan": info,
        }
    )
    storage.update_episodes(episodes)
    for f in tmp.iterdir():
        fsync_path(f)
    fsync_path(tmp)
    tmp.rename(final)
    fsync_path(final.parent)


@hydra.main(config_path=str(CONFIG_DIR), config_name="collect", version_base="1.3")
@reports_user_errors("wmplan-collect")
def main(cfg: DictConfig) -> None:
    """``wmplan-collect``: see ``wmplan/configs/collect.yaml``."""
    env_cfg = EnvConfig(**cfg.env)
    out = collect(env_cfg, cfg.episodes, cfg.policy, cfg.seed, cfg.out_dir, shard_episodes=cfg.shard_episodes,
                  frame_stride=cfg.frame_stride)
    info = load_dataset_info(out)
    print(f"{out}: {info['num_episodes']} episodes, {info['num_steps']} steps of {info['env_id']}")


if __name__ == "__main__":
    main()
