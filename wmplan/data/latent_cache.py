"""Latent cache: every frame of a dataset encoded once by a codec, stored on disk.

A cache folder holds `latents.npy` (float16 [N, C, h, w], memory-mapped on read),
`keys.npy` (int64 [N, 2]: episode, env step of each row) and `meta.json`. Its name is a
hash of the codec's fingerprint (name, settings, weights) and of a sample of the
dataset's frames, so another codec or a re-collected dataset never reads a stale cache.
Folders are written under a temporary name and renamed: a cache is complete or absent. A build
killed part-way resumes where it stopped.

`LatentClipDataset` wraps a `ClipDataset` and adds `latents [T, C, h, w]` to its items.
From `ClipDataset` it uses only the public API: the constructor, the attributes `path`
and `frameskip`, `len`, and items with `pixels`, `episode` and `start` (env step of the
first frame).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from wmplan.atomic import exclusive_lock, write_json_atomic
from wmplan.models.codecs import LatentCodec

CACHE_VERSION = 1
STAMP_FRAMES = 64  # frames hashed to recognise a dataset (with its frame count and keys)


class LatentCache:
    """Read side of a finished cache folder."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        try:
            self.meta = json.loads((self.folder / "meta.json").read_text())
            self.latents = np.load(self.folder / "latents.npy", mmap_mode="r")  # [N, C, h, w] float16
            keys = np.load(self.folder / "keys.npy")  # [N, 2] (episode, step)
        except (OSError, ValueError) as e:
            raise ValueError(f"latent cache {self.folder} is unreadable: {e}") from e
        if len(keys) != len(self.latents) or self.meta.get("version") != CACHE_VERSION:
            raise ValueError(f"latent cache {self.folder} is inconsistent (rows or version)")
        packed = _pack(keys[:, 0], keys[:, 1])
        self._order = np.argsort(packed, kind="stable")
        self._sorted = packed[self._order]

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return tuple(self.latents.shape[1:])

    def rows(self, episode: int, steps: np.ndarray) -> np.ndarray:
        """Row indices of (episode, step) for each step; KeyError if a frame is not cached."""
        want = _pack(np.full_like(steps, episode), steps)
        pos = np.minimum(np.searchsorted(self._sorted, want), len(self._sorted) - 1)
        missing = self._sorted[pos] != want
        if missing.any():
            step = int(np.asarray(steps)[missing][0])
            raise KeyError(f"frame (episode {episode}, step {step}) is not in latent cache {self.folder}")
        return self._order[pos]


def open_latent_cache(
    frames: Sequence[dict], codec: LatentCodec, cache_dir: str | Path, batch_size: int = 256
) -> LatentCache:
    """The cache of `frames` (one-frame items with pixels [1, H, W, 3], episode, start)
    under `codec`, building it on first use."""
    key = hashlib.sha256(f"{codec.fingerprint()}:{_dataset_stamp(frames)}".encode()).hexdigest()
    folder = Path(cache_dir) / f"{codec.cfg.name}-{key[:20]}"
    if not folder.is_dir():
        _build(frames, codec, folder, batch_size, key)
    cache = LatentCache(folder)
    if cache.meta["key"] != key or cache.latent_shape != codec.latent_shape:
        raise ValueError(f"latent cache {folder} does not belong to this codec and dataset; delete it")
    return cache


class LatentClipDataset(Dataset):
    """ClipDataset items with `latents` float32 [T, C, h, w] from the cache; pixels dropped
    unless `keep_pixels` (validation decodes predictions against them)."""

    def __init__(
        self,
        clips: Dataset,
        codec: LatentCodec,
        keep_pixels: bool = False,
        cache_dir: str | Path | None = None,
        batch_size: int = 256,
    ):
        self.clips = clips
        self.keep_pixels = keep_pixels
        if cache_dir is None:
            if not Path(clips.path).is_dir():
                raise ValueError(f"dataset path {clips.path} is not a folder; pass cache_dir")
            cache_dir = Path(clips.path) / "latents"
        self.cache = open_latent_cache(all_frames(clips), codec, cache_dir, batch_size)

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> dict:
        item = dict(self.clips[index])
        pixels = item["pixels"] if self.keep_pixels else item.pop("pixels")
        steps = int(item["start"]) + self.clips.frameskip * np.arange(len(pixels))
        rows = self.cache.rows(int(item["episode"]), steps)
        item["latents"] = torch.from_numpy(self.cache.latents[rows].astype(np.float32))  # [T, C, h, w]
        return item


def all_frames(clips: Dataset) -> Dataset:
    """Every frame of `clips`' dataset as one-frame items: its train split with nothing held out."""
    return type(clips)(clips.path, num_frames=1, frameskip=1, split="train", val_fraction=0.0)


def _build(frames: Sequence[dict], codec: LatentCodec, folder: Path, batch_size: int, key: str) -> None:
    """Encode into ``.partial-<name>``, recording the rows done after every batch, then rename.

    A build killed part-way resumes from its last recorded batch; a lock (where the OS has
    ``fcntl``) makes concurrent builders (DDP ranks) wait for the first one instead.
    """
    folder.parent.mkdir(parents=True, exist_ok=True)
    lock = folder.parent / f".{folder.name}.lock"
    with exclusive_lock(lock):
        if folder.is_dir():  # another builder finished while we waited
            return
        partial = folder.with_name(f".partial-{folder.name}")
        n, shape = len(frames), (len(frames), *codec.latent_shape)
        done = _rows_done(partial, key, shape)
        if done == 0:
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir()
        mode = "r+" if done else "w+"
        latents = np.lib.format.open_memmap(partial / "latents.npy", mode, np.float16, shape)
        keys = np.lib.format.open_memmap(partial / "keys.npy", mode, np.int64, (n, 2))
        # a VAE encodes ~100k frames for minutes on a CPU: show that it is working
        batches = range(done, n, batch_size)
        for lo in tqdm(batches, desc=f"latent cache ({codec.cfg.name}, {n} frames)", unit="batch"):
            items = [frames[i] for i in range(lo, min(lo + batch_size, n))]
            pixels = torch.cat([torch.as_tensor(item["pixels"]) for item in items])  # [b, H, W, 3]
            z = codec.encode(pixels[None])[0].cpu()  # [b, C, h, w]
            if not torch.isfinite(z.half()).all():
                raise ValueError(f"codec {codec.cfg.name!r} latents overflow float16; cannot cache them")
            latents[lo : lo + len(items)] = z.half().numpy()
            keys[lo : lo + len(items)] = [(int(item["episode"]), int(item["start"])) for item in items]
            latents.flush()
            keys.flush()
            write_json_atomic(partial / "progress.json", {"key": key, "rows": lo + len(items)})
        del latents, keys
        (partial / "progress.json").unlink()
        meta = {"version": CACHE_VERSION, "key": key, "codec": codec.cfg.name, "frames": n, "latent_shape": codec.latent_shape}
        write_json_atomic(partial / "meta.json", meta, sort_keys=False)
        os.replace(partial, folder)
        lock.unlink()  # later builders see the folder before they look for a lock


def _rows_done(partial: Path, key: str, shape: tuple[int, ...]) -> int:
    """Rows an interrupted build of this cache finished (0: none, or another cache's leftovers)."""
    try:
        progress = json.loads((partial / "progress.json").read_text())
        latents = np.load(partial / "latents.npy", mmap_mode="r")
    except (OSError, ValueError):
        return 0
    if progress.get("key") != key or latents.shape != shape:
        return 0
    return int(progress["rows"])


def _dataset_stamp(frames: Sequence[dict]) -> str:
    """Frame count plus the keys and pixels of evenly spaced frames."""
    n = len(frames)
    if n == 0:
        raise ValueError("cannot cache latents of an empty dataset")
    h = hashlib.sha256(str(n).encode())
    for i in np.unique(np.linspace(0, n - 1, STAMP_FRAMES).astype(int)):
        item = frames[int(i)]
        h.update(f"{int(item['episode'])}:{int(item['start'])}".encode())
        h.update(np.ascontiguousarray(np.asarray(item["pixels"])).tobytes())
    return h.hexdigest()


def _pack(episode: np.ndarray, step: np.ndarray) -> np.ndarray:
    return (np.asarray(episode, np.int64) << 32) | np.asarray(step, np.int64)
