"""Reading wmplan datasets: metadata, episodes, and ``ClipDataset`` for training.

A dataset directory (written by ``wmplan.data.collect``) holds
- ``wmplan.json``: what was collected (env id and version, resolution, frameskip, policy,
  seed, wmplan version, episode length, dims), written once, atomically;
- ``shards/SSSSSSSS-EEEEEEEE/``: one immutable Minari dataset per shard holding episodes
  ``[S, E)``; shards tile ``[0, num_episodes)`` without gaps;
- ``clip_cache/``: memory-mapped ``.npy`` arrays built by the first ``ClipDataset`` on
  it (frames, actions, proprio, states), rebuilt when the shards change or it is damaged.

Episodes are stored at env-step granularity: ``L`` actions and ``L + 1`` frames/states.
A dataset collected with ``frame_stride`` n (in ``wmplan.json``; 1 when absent) holds only the
frames of env steps 0, n, 2n, ... (``L // n + 1`` per episode); actions, proprio and states
stay at every step. Clips then start at those steps only, ``frameskip`` a multiple of n.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import minari
import numpy as np

from wmplan.atomic import fsync_path, write_json_atomic

if TYPE_CHECKING:
    from torch.utils.data import Dataset, Subset

FORMAT = "wmplan-minari-shards/1"
INFO_FILE = "wmplan.json"
SHARD_DIR = "shards"
CACHE_DIR = "clip_cache"
_CACHE_VERSION = 1
_SHARD_NAME = re.compile(r"^(\d{8})-(\d{8})$")
_INFO_KEYS = {"format", "env", "env_id", "env_version", "env_kwargs", "resolution", "frameskip",
              "history", "episode_length", "policy", "seed", "wmplan_version", "action_dim",
              "proprio_dim", "state_dim"}  # fmt: skip
_ARRAYS = ("frames", "actions", "proprio", "states")


# -- metadata and shards ------------------------------------------------------------


def read_info(path: str | os.PathLike) -> dict:
    """The validated ``wmplan.json`` of dataset ``path``."""
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"no dataset directory at {root}")
    info_path = root / INFO_FILE
    if not info_path.is_file():
        raise ValueError(f"{root} is not a wmplan dataset: {INFO_FILE} is missing")
    try:
        info = json.loads(info_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"corrupt dataset {root}: {INFO_FILE} is unreadable ({e})") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        found = info.get("format") if isinstance(info, dict) else None
        raise ValueError(f"{root} is not a wmplan dataset of format {FORMAT!r} (found {found!r})")
    missing = _INFO_KEYS - info.keys()
    if missing:
        raise ValueError(f"corrupt dataset {root}: {INFO_FILE} lacks {sorted(missing)}")
    stride = info.get("frame_stride", 1)
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        raise ValueError(f"corrupt dataset {root}: frame_stride must be a positive int, got {stride!r}")
    return info


def frame_stride_of(info: dict) -> int:
    """Env steps between the stored frames of a dataset (1: every frame)."""
    return int(info.get("frame_stride", 1))


def stored_frames(steps: np.ndarray | int, stride: int) -> np.ndarray | int:
    """Frames stored for episodes of ``steps`` env steps: env steps 0, stride, ... up to ``steps``."""
    return steps // stride + 1


def list_shards(path: str | os.PathLike, info: dict) -> list[tuple[int, int, Path]]:
    """Committed shards ``(start, stop, dir)`` in episode order, checked to tile ``[0, N)``.

    Names starting with ``.`` are unfinished shards of an interrupted run and are skipped.
    """
    shard_root = Path(path) / SHARD_DIR
    if not shard_root.is_dir():
        raise ValueError(f"corrupt dataset {path}: {SHARD_DIR}/ is missing")
    shards = []
    for d in sorted(shard_root.iterdir()):
        if d.name.startswith("."):
            continue
        match = _SHARD_NAME.match(d.name)
        if not match:
            raise ValueError(f"corrupt dataset {path}: unexpected entry {d.name!r} in {SHARD_DIR}/")
        shards.append((int(match[1]), int(match[2]), d))
    expected = 0
    for start, stop, d in shards:
        if start != expected or stop <= start:
            raise ValueError(f"corrupt dataset {path}: shard {d.name} does not follow episode {expected}")
        meta = _shard_metadata(d)
        if meta.get("wmplan") != info or meta.get("total_episodes") != stop - start:
            raise ValueError(f"corrupt dataset {path}: shard {d.name} does not match {INFO_FILE}")
        expected = stop
    return shards


def _shard_metadata(shard: Path) -> dict:
    try:
        return json.loads((shard / "metadata.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"corrupt shard {shard}: Minari metadata.json is unreadable ({e})") from None


def load_dataset_info(path: str | os.PathLike) -> dict:
    """Metadata of dataset ``path`` plus ``num_episodes`` and ``num_steps`` (env steps)."""
    info = read_info(path)
    shards = list_shards(path, info)
    steps = sum(_shard_metadata(d)["total_steps"] for _, _, d in shards)
    return {**info, "num_episodes": shards[-1][1] if shards else 0, "num_steps": steps}


def iter_episodes(path: str | os.PathLike) -> Iterator[dict[str, np.ndarray]]:
    """Every episode in order: ``pixels`` uint8 [L+1, H, W, 3], ``proprio`` float32 [L+1, P],
    ``actions`` float32 [L, A], ``states`` float64 [L+1, S]."""
    info = read_info(path)
    for *_, shard in list_shards(path, info):
        yield from _shard_episodes(shard, info)


def _shard_episodes(shard: Path, info: dict) -> Iterator[dict[str, np.ndarray]]:
    try:
        with warnings.catch_warnings():  # Minari warns about datasets without an env spec
            warnings.simplefilter("ignore")
            data = minari.MinariDataset(shard)
        for ep in data.iterate_episodes():
            yield _check_episode(info, ep)
    except (OSError, KeyError, ValueError) as e:
        raise ValueError(f"corrupt shard {shard}: {e}") from e


def _check_episode(info: dict, ep: minari.EpisodeData) -> dict[str, np.ndarray]:
    """The episode's arrays, checked against the shapes ``info`` promises."""
    r = info["resolution"]
    episode = {
        "pixels": np.asarray(ep.observations["pixels"]),
        "proprio": np.asarray(ep.observations["proprio"], dtype=np.float32),
        "actions": np.asarray(ep.actions, dtype=np.float32),
        "states": np.asarray(ep.infos["state"], dtype=np.float64),
    }
    n = len(episode["actions"]) + 1
    expected = {
        "pixels": (stored_frames(n - 1, frame_stride_of(info)), r, r, 3),
        "proprio": (n, info["proprio_dim"]),
        "actions": (n - 1, info["action_dim"]),
        "states": (n, info["state_dim"]),
    }
    for key, shape in expected.items():
        if episode[key].shape != shape:
            raise ValueError(f"episode {ep.id} {key} has shape {episode[key].shape}, expected {shape}")
    if episode["pixels"].dtype != np.uint8:
        raise ValueError(f"episode {ep.id} pixels are {episode['pixels'].dtype}, expected uint8")
    return episode


# -- frame cache --------------------------------------------------------------------


def _cache_key(shards: list[tuple[int, int, Path]]) -> dict:
    """Identifies the shards a cache was built from; shards are immutable once committed."""
    files = [(d.name, (d / "main_data.hdf5").stat()) for *_, d in shards]
    return {"version": _CACHE_VERSION, "shards": [[name, st.st_size, st.st_mtime_ns] for name, st in files]}


def open_cache(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The dataset's cache arrays, memory-mapped read-only; built or rebuilt when needed.

    ``proprio`` float32 [F, P], ``states`` float64 [F, S], ``actions`` float32 [F - E, A],
    ``offsets`` int64 [E + 1] (episode e owns env steps ``offsets[e]:offsets[e+1]`` of proprio
    and states, and actions ``offsets[e]-e : offsets[e+1]-e-1``), ``frames`` uint8 [F', H, W, 3]
    with ``frame_offsets`` int64 [E + 1] (the same as ``offsets`` unless the dataset has a
    ``frame_stride``), and ``key`` (the shard list it was built from, for ``reopen_cache``).
    """
    root = Path(path)
    info = read_info(root)
    shards = list_shards(root, info)
    if not shards:
        raise ValueError(f"dataset {root} holds no episodes yet")
    key = _cache_key(shards)
    try:
        arrays = _load_cache(root / CACHE_DIR, key, frame_stride_of(info))
    except (OSError, ValueError, json.JSONDecodeError):
        _build_cache(root, info, shards, key)
        arrays = _load_cache(root / CACHE_DIR, key, frame_stride_of(info))
    return {**arrays, "key": key}


def reopen_cache(path: str | os.PathLike, key: dict) -> dict[str, np.ndarray]:
    """Open a cache known to exist (e.g. in a DataLoader worker) without rebuilding it."""
    try:
        return {**_load_cache(Path(path) / CACHE_DIR, key, frame_stride_of(read_info(path))), "key": key}
    except (OSError, ValueError, json.JSONDecodeError) as e:
        raise ValueError(f"the clip cache of {path} changed or broke while in use ({e})") from e


def _load_cache(cache: Path, key: dict, frame_stride: int) -> dict[str, np.ndarray]:
    if json.loads((cache / "key.json").read_text()) != key:
        raise ValueError("stale cache")
    arrays = {name: np.load(cache / f"{name}.npy", mmap_mode="r") for name in _ARRAYS}
    offsets = arrays["offsets"] = np.load(cache / "offsets.npy")
    arrays["frame_offsets"] = np.concatenate([[0], np.cumsum(stored_frames(np.diff(offsets) - 1, frame_stride))])
    steps, episodes = offsets[-1], len(offsets) - 1
    lengths = {"frames": arrays["frame_offsets"][-1], "proprio": steps, "states": steps, "actions": steps - episodes}
    if any(len(arrays[name]) != n for name, n in lengths.items()):
        raise ValueError("cache arrays disagree in length")
    return arrays


def _build_cache(root: Path, info: dict, shards: list[tuple[int, int, Path]], key: dict) -> None:
    """Write all arrays into a temporary directory, then swap it in; key.json is written last."""
    tmp = root / f".{CACHE_DIR}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        _write_cache_arrays(tmp, info, shards)
        write_json_atomic(tmp / "key.json", key)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = root / f".{CACHE_DIR}.old-{os.getpid()}"
    if (root / CACHE_DIR).exists():
        (root / CACHE_DIR).rename(old)
    tmp.rename(root / CACHE_DIR)
    fsync_path(root)
    shutil.rmtree(old, ignore_errors=True)


def _write_cache_arrays(tmp: Path, info: dict, shards: list[tuple[int, int, Path]]) -> None:
    metas = [_shard_metadata(d) for *_, d in shards]
    episodes = sum(m["total_episodes"] for m in metas)
    rows = sum(m["total_steps"] for m in metas) + episodes  # of states and proprio: L + 1 per episode
    stride = frame_stride_of(info)
    pixel_rows = rows if stride == 1 else sum(stored_frames(_episode_steps(d), stride).sum() for *_, d in shards)
    r = info["resolution"]
    shapes = {
        "frames": ((int(pixel_rows), r, r, 3), np.uint8),
        "proprio": ((rows, info["proprio_dim"]), np.float32),
        "states": ((rows, info["state_dim"]), np.float64),
        "actions": ((rows - episodes, info["action_dim"]), np.float32),
    }
    out = {name: np.lib.format.open_memmap(tmp / f"{name}.npy", "w+", dt, shape) for name, (shape, dt) in shapes.items()}  # fmt: skip
    offsets, p0 = [0], 0
    episode_iter = (ep for *_, d in shards for ep in _shard_episodes(d, info))
    for e, ep in enumerate(episode_iter):
        f0, n, m = offsets[-1], len(ep["states"]), len(ep["pixels"])
        if f0 + n > rows or p0 + m > pixel_rows:
            raise ValueError(f"corrupt dataset {tmp.parent}: episodes hold more steps than the shard metadata says")
        out["frames"][p0 : p0 + m] = ep["pixels"]
        p0 += m
        out["proprio"][f0 : f0 + n] = ep["proprio"]
        out["states"][f0 : f0 + n] = ep["states"]
        out["actions"][f0 - e : f0 - e + n - 1] = ep["actions"]
        offsets.append(f0 + n)
    if offsets[-1] != rows or p0 != pixel_rows:
        raise ValueError(f"corrupt dataset {tmp.parent}: episodes hold fewer steps than the shard metadata says")
    for array in out.values():
        array.flush()
    del out
    np.save(tmp / "offsets.npy", np.asarray(offsets, dtype=np.int64))
    for name in (*_ARRAYS, "offsets"):  # data must be durable before key.json vouches for it
        fsync_path(tmp / f"{name}.npy")


def _episode_steps(shard: Path) -> np.ndarray:
    """Env steps of each episode of a shard [episodes], from its HDF5 attributes (no data read)."""
    import h5py  # Minari's HDF5 backend

    with h5py.File(shard / "main_data.hdf5", "r") as f:
        return np.array([f[name].attrs["total_steps"] for name in f], dtype=np.int64)


# -- clips --------------------------------------------------------------------------


def split_episodes(num_episodes: int, val_fraction: float, seed: int) -> np.ndarray:
    """Bool mask [num_episodes], True for validation episodes.

    Each episode draws its own uniform number from ``(seed, episode)``, so an episode keeps
    its side of the split when a resumed collection appends more episodes.
    """
    u = np.array([np.random.default_rng([seed, e]).random() for e in range(num_episodes)])
    return u < val_fraction


class ClipDataset:
    """Random-access clips of ``num_frames`` frames taken ``frameskip`` env steps apart.

    Item: ``pixels`` uint8 [T, H, W, 3], ``actions`` float32 [T-1, k*A] (the k env actions
    between frame i and i+1, concatenated), ``proprio`` float32 [T, P], ``states`` float64
    [T, S], ``episode`` and ``start`` (env step of frame 0) ints. Every env step of every
    episode of the split starts a clip (every ``frame_stride``-th step, when the dataset stores
    only those frames). A plain map-style dataset: torch's DataLoader collates its numpy arrays
    into tensors.

    ``proprio_stats()`` gives normalisation statistics over the *train* episodes (the same
    for either split). ``max_train_episodes`` keeps only the first N train episodes (data-size
    curves); the validation split stays the same.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        num_frames: int,
        frameskip: int,
        split: str = "train",
        val_fraction: float = 0.1,
        seed: int = 0,
        max_train_episodes: int | None = None,
    ):
        if not isinstance(num_frames, int) or num_frames < 1:
            raise ValueError(f"num_frames must be a positive int, got {num_frames!r}")
        if not isinstance(frameskip, int) or frameskip < 1:
            raise ValueError(f"frameskip must be a positive int, got {frameskip!r}")
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
        if max_train_episodes is not None and (isinstance(max_train_episodes, bool) or
                                               not isinstance(max_train_episodes, int) or max_train_episodes < 1):
            raise ValueError(f"max_train_episodes must be a positive int or None, got {max_train_episodes!r}")
        self.path, self.num_frames, self.frameskip = Path(path), num_frames, frameskip
        self.info = read_info(path)
        self.stride = frame_stride_of(self.info)
        if num_frames > 1 and frameskip % self.stride:
            raise ValueError(f"{path} stores one frame every {self.stride} env steps (frame_stride {self.stride}): "
                             f"frameskip must be a multiple of it, got {frameskip}")
        arrays = open_cache(path)
        self.key = arrays["key"]
        self.offsets = arrays["offsets"]  # [E + 1], env steps (states, proprio)
        self.frame_offsets = arrays["frame_offsets"]  # [E + 1], stored frames
        lengths = np.diff(self.offsets) - 1  # env steps per episode [E]
        is_val = split_episodes(len(lengths), val_fraction, seed)
        train_episodes = np.flatnonzero(~is_val)[:max_train_episodes]
        if max_train_episodes is not None and len(train_episodes) < max_train_episodes:
            raise ValueError(f"{path} has {len(train_episodes)} train episodes, fewer than max_train_episodes="
                             f"{max_train_episodes}")
        self.episodes = np.flatnonzero(is_val) if split == "val" else train_episodes
        span = (num_frames - 1) * frameskip  # env steps covered by one clip
        counts = np.where(lengths[self.episodes] >= span, (lengths[self.episodes] - span) // self.stride + 1, 0)
        self.cumulative = np.cumsum(counts)  # clips in episodes[:i+1]
        if len(self) == 0:
            raise ValueError(
                f"{split} split of {path} has no clips: {len(self.episodes)} episodes, "
                f"val_fraction {val_fraction}, clips need {span} env steps"
            )
        if is_val.all():
            raise ValueError(f"{path}: all {len(is_val)} episodes fell into the val split ({val_fraction=})")
        self._train_episodes = train_episodes
        self._arrays: dict[str, np.ndarray] | None = arrays

    def __len__(self) -> int:
        return int(self.cumulative[-1]) if len(self.cumulative) else 0

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"clip {index} out of range for {len(self)} clips")
        index %= len(self)
        i = int(np.searchsorted(self.cumulative, index, side="right"))
        episode = int(self.episodes[i])
        start = self.stride * (index - (int(self.cumulative[i - 1]) if i else 0))  # env step of frame 0
        arrays, k, t = self.arrays, self.frameskip, self.num_frames
        a = arrays["actions"].shape[1]
        f0 = int(self.offsets[episode]) + start  # first frame's row of states and proprio
        a0 = f0 - episode  # first action: episodes before this one have one frame more than actions
        frames = slice(f0, f0 + (t - 1) * k + 1, k)
        p0, pk = int(self.frame_offsets[episode]) + start // self.stride, max(k // self.stride, 1)
        return {
            "pixels": np.array(arrays["frames"][p0 : p0 + (t - 1) * pk + 1 : pk]),
            "actions": np.array(arrays["actions"][a0 : a0 + (t - 1) * k]).reshape(t - 1, k * a),
            "proprio": np.array(arrays["proprio"][frames]),
            "states": np.array(arrays["states"][frames]),
            "episode": episode,
            "start": start,
        }

    @property
    def arrays(self) -> dict[str, np.ndarray]:
        if self._arrays is None:  # reopened lazily after pickling into a DataLoader worker
            self._arrays = reopen_cache(self.path, self.key)
        return self._arrays

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_arrays": None}  # memory maps do not pickle as maps

    def proprio_stats(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean and std float32 [P] of proprio over the train episodes' frames."""
        proprio = self.train_frames("proprio")
        return proprio.mean(0).astype(np.float32), safe_std(proprio)

    def action_stats(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean and std float32 [A] of the env actions of the train episodes (the scale a planner
        should sample at: DINO-WM plans in actions normalised by them)."""
        o, e = self.offsets, self._train_episodes
        rows = np.concatenate([np.arange(o[i] - i, o[i + 1] - i - 1) for i in e])  # actions: one fewer per episode
        actions = np.asarray(self.arrays["actions"][rows])
        return actions.mean(0).astype(np.float32), safe_std(actions)

    def train_frames(self, key: str) -> np.ndarray:
        """Array ``key`` ("proprio" or "states") of every frame of the train episodes, [F, ...]."""
        if key not in ("proprio", "states"):
            raise ValueError(f"train_frames reads 'proprio' or 'states', got {key!r}")
        return np.asarray(self.arrays[key][self._frame_rows(self._train_episodes)])

    def _frame_rows(self, episodes: np.ndarray) -> np.ndarray:
        """Cache rows of the frames of ``episodes``."""
        o = self.offsets
        return np.concatenate([np.arange(o[e], o[e + 1]) for e in episodes])


def validation_subset(dataset: Dataset, n: int, seed: int) -> Subset:
    """A fixed set of ``n`` clips of ``dataset`` (same seed, same clips)."""
    from torch.utils.data import Subset  # imported here: reading datasets stays torch-free

    rng = np.random.default_rng(seed)
    idx = rng.choice(len(dataset), size=min(n, len(dataset)), replace=False)
    return Subset(dataset, sorted(int(i) for i in idx))


def safe_std(x: np.ndarray) -> np.ndarray:
    """Per-dimension std [D] of x [N, D]; 1 where a dimension never varies, so it stays unscaled."""
    return unit_where_constant(x.std(0))


def unit_where_constant(std: np.ndarray) -> np.ndarray:
    """``std`` as float32, with 1 where it is ~0, so that dividing by it leaves a constant unscaled."""
    return np.where(std > 1e-6, std, 1.0).astype(np.float32)
