"""Import external video data into a wmplan dataset (the format ``wmplan-collect`` writes).

    python -m wmplan.data.importers lerobot  SOURCE OUT_DIR --resolution 64
    python -m wmplan.data.importers mp4      SOURCE OUT_DIR --resolution 64
    python -m wmplan.data.importers video    SOURCE OUT_DIR --resolution 64 --action-dim 2
    python -m wmplan.data.importers dino_wm  SOURCE OUT_DIR --resolution 64

The result is an ordinary dataset directory (``wmplan.json`` + immutable Minari shards, see
``wmplan.data.dataset``), so ``ClipDataset``, the latent cache, training and diagnostics read
it unchanged. Shards are written with ``wmplan.data.collect``'s own writer: an import killed
part-way keeps its committed shards, and rerunning the same command continues after them
(a rerun with other settings is refused, like ``wmplan-collect``'s).

Conventions (docs/DATA_IMPORT.md has the per-format field mapping):
- each source frame is one env step: an episode of ``N`` frames stores ``N`` frames and the
  ``N - 1`` actions between them (``actions[t]`` takes frame ``t`` to frame ``t + 1``).
  Sources that store one action per frame (LeRobot, DINO-WM) drop the last one, which leads
  out of the episode;
- frames are made square (``fit="crop"``: centre crop to the shorter side, the default;
  ``fit="pad"``: black bars to the longer side), then resized to ``resolution`` with PIL's
  antialiased bilinear filter, uint8 RGB;
- ``action_free: true`` in ``wmplan.json`` marks a dataset whose actions are zeros that
  stand for "unknown" (the ``video`` format), to pretrain on, never to learn dynamics from.
Videos are decoded with imageio-ffmpeg, one episode at a time; ``.pth`` files are read with
``torch.load(weights_only=True)`` and ``.pkl`` files with an unpickler that refuses every
class, so no imported file can run code. Parquet needs ``pyarrow`` (an optional dependency).
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
from gymnasium.spaces import Box, Dict
from minari.data_collector import EpisodeBuffer
from PIL import Image

import wmplan
from wmplan.cli import reports_user_errors
from wmplan.data.collect import _prepare, write_in_shards
from wmplan.data.dataset import FORMAT, load_dataset_info

FORMATS = ("lerobot", "mp4", "video", "dino_wm")
FITS = ("crop", "pad")


@dataclass
class Episode:
    """One episode at source-frame granularity: frames uint8 [N, r, r, 3], actions [N-1, A],
    proprio [N, P], states [N, S]."""

    frames: np.ndarray
    actions: np.ndarray
    proprio: np.ndarray
    states: np.ndarray


# -- frames -------------------------------------------------------------------------


def square_resize(frame: np.ndarray, resolution: int, fit: str = "crop") -> np.ndarray:
    """uint8 [H, W, 3] -> uint8 [r, r, 3]: centre-crop (or pad with black) to a square, resize."""
    h, w = frame.shape[:2]
    if fit == "crop":
        s = min(h, w)
        top, left = (h - s) // 2, (w - s) // 2
        frame = frame[top : top + s, left : left + s]
    elif fit == "pad":
        s = max(h, w)
        padded = np.zeros((s, s, 3), np.uint8)
        top, left = (s - h) // 2, (s - w) // 2
        padded[top : top + h, left : left + w] = frame
        frame = padded
    else:
        raise ValueError(f"fit must be one of {FITS}, got {fit!r}")
    if frame.shape[0] == resolution:
        return np.ascontiguousarray(frame)
    image = Image.fromarray(np.ascontiguousarray(frame)).resize((resolution, resolution), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def _to_uint8_rgb(frames: Any, path: Path) -> np.ndarray:
    """Frames of a tensor file, [T, H, W, C] or [T, C, H, W] with C in {1, 3}, as uint8 [T, H, W, 3].
    Floats are taken as 0..255 values, unless none exceeds 1 (then as 0..1)."""
    a = np.asarray(frames)
    if a.ndim != 4 or not (a.shape[-1] in (1, 3) or a.shape[1] in (1, 3)):
        raise ValueError(f"{path}: frames must be [T, H, W, 3] or [T, 3, H, W], got shape {a.shape}")
    if a.shape[-1] not in (1, 3):
        a = a.transpose(0, 2, 3, 1)
    if a.dtype != np.uint8:
        if not np.issubdtype(a.dtype, np.number) or np.issubdtype(a.dtype, np.complexfloating):
            raise ValueError(f"{path}: frames have dtype {a.dtype}, expected uint8 or float")
        a = a.astype(np.float64)
        if a.size and a.max() <= 1.0:
            a = a * 255.0
        a = np.clip(np.rint(a), 0, 255).astype(np.uint8)
    return np.repeat(a, 3, axis=-1) if a.shape[-1] == 1 else a


class VideoReader:
    """Sequential RGB frames of one video file via imageio-ffmpeg; errors name the file."""

    def __init__(self, path: Path):
        import imageio_ffmpeg

        self.path, self.position = Path(path), 0
        if not self.path.is_file():
            raise ValueError(f"video file {self.path} does not exist")
        try:
            self._gen = imageio_ffmpeg.read_frames(str(self.path), pix_fmt="rgb24", output_params=["-fps_mode", "passthrough"])
            meta = next(self._gen)
        except (OSError, RuntimeError, StopIteration) as e:
            raise ValueError(f"cannot decode video {self.path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
        self.width, self.height = meta["size"]
        self.fps = float(meta.get("fps") or 0.0)

    def read(self, n: int | None = None) -> np.ndarray:
        """The next ``n`` frames (all remaining if None) uint8 [n, H, W, 3]; fewer at the end."""
        frames = []
        try:
            while n is None or len(frames) < n:
                try:
                    buf = next(self._gen)
                except StopIteration:
                    break
                frames.append(np.frombuffer(buf, np.uint8).reshape(self.height, self.width, 3))
        except (OSError, RuntimeError) as e:
            raise ValueError(f"cannot decode video {self.path}: {str(e).splitlines()[0]}") from None
        self.position += len(frames)
        return np.stack(frames) if frames else np.zeros((0, self.height, self.width, 3), np.uint8)

    def skip(self, n: int) -> None:
        while n > 0:  # in small batches: skipping holds no more than 64 frames
            got = len(self.read(min(n, 64)))
            if got == 0:
                return
            n -= got

    def close(self) -> None:
        self._gen.close()


def read_video(path: Path) -> np.ndarray:
    reader = VideoReader(path)
    try:
        return reader.read()
    finally:
        reader.close()


def _resize_all(frames: np.ndarray, resolution: int, fit: str) -> np.ndarray:
    return np.stack([square_resize(f, resolution, fit) for f in frames]) if len(frames) else frames


# -- safe loaders ---------------------------------------------------------------------


def _load_pth(path: Path) -> Any:
    import torch

    if not path.is_file():
        raise ValueError(f"missing file {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for corrupt or unsafe files
        raise ValueError(f"cannot read {path} as a tensor file (torch.load weights_only=True): {str(e).splitlines()[0]}") from None
    return obj


def _tensor_to_numpy(obj: Any, path: Path) -> np.ndarray:
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().numpy()
    if isinstance(obj, (list, tuple)) and all(isinstance(x, (int, float)) for x in obj):
        return np.asarray(obj)
    if isinstance(obj, (list, tuple)) and all(isinstance(x, torch.Tensor) for x in obj):
        return np.asarray([x.item() for x in obj])
    raise ValueError(f"{path} holds a {type(obj).__name__}, expected a tensor")


class _NoClassUnpickler(pickle.Unpickler):
    """Plain containers and numbers only: any class or function reference is refused."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _load_plain_pickle(path: Path) -> Any:
    try:
        with open(path, "rb") as f:
            return _NoClassUnpickler(f).load()
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as e:
        raise ValueError(f"cannot read {path}: only plain lists of numbers are accepted from pickles ({e})") from None


def _read_parquet(path: Path, columns: Sequence[str]) -> dict[str, np.ndarray]:
    """``columns`` of a parquet file as numpy: scalars [n], lists / fixed-size lists [n, d]."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ValueError(f"reading {path} needs pyarrow, which is not installed (pip install pyarrow)") from None
    try:
        names = pq.read_schema(path).names
        missing = [c for c in columns if c not in names]
        table = None if missing else pq.read_table(path, columns=list(columns))  # only the columns needed
    except Exception as e:  # noqa: BLE001 - pyarrow's errors for corrupt files vary
        raise ValueError(f"cannot read parquet file {path}: {e}") from None
    if missing:
        raise ValueError(f"parquet file {path} has no column {missing[0]!r} (columns: {names})")
    out = {}
    for name in columns:
        col = table.column(name).combine_chunks()
        if col.null_count:
            raise ValueError(f"parquet file {path}: column {name!r} has missing values")
        if hasattr(col, "flatten") and hasattr(col.type, "value_type"):  # list / fixed-size list
            values = col.flatten().to_numpy(zero_copy_only=False)
            if len(col) and len(values) % len(col):
                raise ValueError(f"parquet file {path}: column {name!r} rows differ in length")
            out[name] = values.reshape(len(col), -1)
        else:
            out[name] = col.to_numpy(zero_copy_only=False)
    return out


def _actions_2d(a: np.ndarray, path: Path) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2 or not np.issubdtype(a.dtype, np.number):
        raise ValueError(f"{path}: actions must be a numeric [T, A] array, got shape {a.shape} dtype {a.dtype}")
    if not np.isfinite(a).all():
        raise ValueError(f"{path}: actions contain NaN or inf")
    return a.astype(np.float32)


def _per_frame_actions(actions: np.ndarray, frames: int, what: str) -> np.ndarray:
    """The ``frames - 1`` transition actions from ``frames - 1`` of them or one per frame."""
    if len(actions) == frames:
        return actions[:-1]
    if len(actions) == frames - 1:
        return actions
    raise ValueError(f"{what}: {len(actions)} actions for {frames} frames (expected {frames - 1} or {frames})")


# -- sources --------------------------------------------------------------------------


class Source:
    """An external dataset: its dims and metadata, and its episodes in a fixed order."""

    format: str
    action_dim: int
    proprio_dim: int = 0
    state_dim: int = 0
    action_free: bool = False

    def description(self) -> dict:
        """What identifies the source in ``wmplan.json`` (a rerun must give the same)."""
        raise NotImplementedError

    def episodes(self, start: int, resolution: int, fit: str) -> Iterator[Episode]:
        """Episodes ``start, start + 1, ...`` (the ones before are not decoded)."""
        raise NotImplementedError


class VideoFolderSource(Source):
    """``*.mp4`` in a folder (sorted by name), each with ``<stem>.npy``, ``<stem>.npz``
    (``actions_key``) or ``<stem>.parquet`` (column ``actions_key``) beside it; or, with
    ``action_dim`` given and ``action_free``, no actions at all (zeros are stored)."""

    def __init__(self, root: str | Path, actions_key: str = "actions", action_free: bool = False, action_dim: int | None = None):
        self.root = Path(root).absolute()
        if not self.root.is_dir():
            raise ValueError(f"no video folder at {self.root}")
        self.videos = sorted(self.root.glob("*.mp4"))
        if not self.videos:
            raise ValueError(f"no .mp4 files in {self.root}")
        self.actions_key, self.action_free = actions_key, action_free
        self.format = "video" if action_free else "mp4"
        if action_free:
            if not isinstance(action_dim, int) or isinstance(action_dim, bool) or action_dim < 1:
                raise ValueError(f"action-free video needs a declared action_dim >= 1, got {action_dim!r}")
            self.action_dim = action_dim
        else:
            self.action_dim = self._load_actions(self.videos[0]).shape[1]
            if action_dim is not None and action_dim != self.action_dim:
                raise ValueError(f"{self.videos[0]}: actions have dimension {self.action_dim}, not the declared {action_dim}")

    def description(self) -> dict:
        return {"format": self.format, "path": str(self.root), "files": len(self.videos),
                **({} if self.action_free else {"actions_key": self.actions_key})}  # fmt: skip

    def _load_actions(self, video: Path) -> np.ndarray:
        found = [video.with_suffix(s) for s in (".npy", ".npz", ".parquet") if video.with_suffix(s).is_file()]
        if not found:
            raise ValueError(f"{video} has no actions file beside it ({video.stem}.npy, .npz or .parquet)")
        if len(found) > 1:
            raise ValueError(f"{video} has several actions files beside it: {[p.name for p in found]}")
        path = found[0]
        try:
            if path.suffix == ".npy":
                actions = np.load(path, allow_pickle=False)
            elif path.suffix == ".npz":
                with np.load(path, allow_pickle=False) as z:
                    if self.actions_key not in z.files:
                        raise ValueError(f"{path} has no {self.actions_key!r} array (arrays: {z.files})")
                    actions = z[self.actions_key]
            else:
                actions = _read_parquet(path, [self.actions_key])[self.actions_key]
        except (OSError, EOFError) as e:
            raise ValueError(f"cannot read actions file {path}: {e}") from None
        except ValueError as e:
            raise ValueError(str(e) if str(path) in str(e) else f"cannot read actions file {path}: {e}") from None
        return _actions_2d(actions, path)

    def episodes(self, start: int, resolution: int, fit: str) -> Iterator[Episode]:
        for video in self.videos[start:]:
            frames = read_video(video)
            if len(frames) < 2:
                raise ValueError(f"video {video} has {len(frames)} frames; an episode needs at least 2")
            n = len(frames)
            if self.action_free:
                actions = np.zeros((n - 1, self.action_dim), np.float32)
            else:
                actions = _per_frame_actions(self._load_actions(video), n, f"{video}")
                if actions.shape[1] != self.action_dim:
                    raise ValueError(f"{video}: actions have dimension {actions.shape[1]}, the first video's have {self.action_dim}")
            yield Episode(_resize_all(frames, resolution, fit), actions, np.zeros((n, 0), np.float32), np.zeros((n, 0)))


class LeRobotSource(Source):
    """A LeRobot v3 dataset folder: ``meta/info.json``, ``meta/episodes/chunk-*/file-*.parquet``,
    ``data/chunk-*/file-*.parquet``, ``videos/<camera>/chunk-*/file-*.mp4``."""

    format = "lerobot"

    def __init__(self, root: str | Path, camera: str | None = None, action_key: str = "action", state_key: str = "observation.state"):
        self.root = Path(root).absolute()
        info_path = self.root / "meta" / "info.json"
        try:
            self.meta = json.loads(info_path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"not a LeRobot dataset: cannot read {info_path} ({e})") from None
        version = str(self.meta.get("codebase_version", ""))
        if not version.startswith("v3"):
            raise ValueError(f"{info_path}: codebase_version {version!r} is not supported (LeRobot v3.x only)")
        features = self.meta.get("features")
        for key in ("fps", "data_path", "video_path"):
            if key not in self.meta:
                raise ValueError(f"{info_path} lacks {key!r}")
        if not isinstance(features, dict):
            raise ValueError(f"{info_path} lacks 'features'")
        cameras = [k for k, v in features.items() if isinstance(v, dict) and v.get("dtype") == "video"]
        if not cameras:
            raise ValueError(f"{info_path}: no video feature (features with dtype 'video')")
        if camera is None:
            camera = cameras[0]
        if camera not in cameras:
            raise ValueError(f"{info_path}: no video feature {camera!r}; videos: {cameras}")
        if action_key not in features:
            raise ValueError(f"{info_path}: no feature {action_key!r} (features: {list(features)})")
        self.camera, self.action_key = camera, action_key
        self.state_key = state_key if state_key in features else None
        self.fps = float(self.meta["fps"])
        self.action_dim = int(np.prod(features[action_key]["shape"]))
        self.state_dim = self.proprio_dim = int(np.prod(features[state_key]["shape"])) if self.state_key else 0
        self.episode_table = self._episode_table()

    def description(self) -> dict:
        return {"format": self.format, "path": str(self.root), "codebase_version": self.meta["codebase_version"],
                "camera": self.camera, "action_key": self.action_key, "state_key": self.state_key,
                "fps": self.fps, "episodes": len(self.episode_table["episode_index"])}  # fmt: skip

    def _episode_table(self) -> dict[str, np.ndarray]:
        files = sorted((self.root / "meta" / "episodes").glob("chunk-*/file-*.parquet"))
        if not files:
            raise ValueError(f"not a LeRobot v3 dataset: no {self.root / 'meta/episodes'}/chunk-*/file-*.parquet")
        v = f"videos/{self.camera}"
        cols = ["episode_index", "length", "data/chunk_index", "data/file_index",
                f"{v}/chunk_index", f"{v}/file_index", f"{v}/from_timestamp", f"{v}/to_timestamp"]  # fmt: skip
        parts = [_read_parquet(f, cols) for f in files]
        table = {c: np.concatenate([np.asarray(p[c]).reshape(-1) for p in parts]) for c in cols}
        order = np.argsort(table["episode_index"], kind="stable")
        return {c: a[order] for c, a in table.items()}

    def episodes(self, start: int, resolution: int, fit: str) -> Iterator[Episode]:
        t, v = self.episode_table, f"videos/{self.camera}"
        data_file: Path | None = None
        data: dict[str, np.ndarray] = {}
        reader: VideoReader | None = None
        try:
            for i in range(start, len(t["episode_index"])):
                ep, length = int(t["episode_index"][i]), int(t["length"][i])
                path = self.root / self.meta["data_path"].format(chunk_index=int(t["data/chunk_index"][i]), file_index=int(t["data/file_index"][i]))  # fmt: skip
                if path != data_file:  # one data file at a time; episodes of a file are consecutive
                    cols = ["episode_index", "frame_index", self.action_key] + ([self.state_key] if self.state_key else [])
                    data, data_file = _read_parquet(path, cols), path
                rows = np.flatnonzero(data["episode_index"] == ep)
                rows = rows[np.argsort(data["frame_index"][rows], kind="stable")]
                if len(rows) != length:
                    raise ValueError(f"{path}: episode {ep} has {len(rows)} rows, meta/episodes says length {length}")
                if length < 2:
                    raise ValueError(f"{path}: episode {ep} has {length} frames; an episode needs at least 2")
                actions = _actions_2d(data[self.action_key][rows], path)
                if actions.shape[1] != self.action_dim:
                    raise ValueError(f"{path}: {self.action_key!r} has dimension {actions.shape[1]}, info.json says {self.action_dim}")
                state = np.asarray(data[self.state_key][rows], np.float64).reshape(length, -1) if self.state_key else np.zeros((length, 0))
                if state.shape[1] != self.state_dim:
                    raise ValueError(f"{path}: {self.state_key!r} has dimension {state.shape[1]}, info.json says {self.state_dim}")
                video = self.root / self.meta["video_path"].format(video_key=self.camera, chunk_index=int(t[f"{v}/chunk_index"][i]), file_index=int(t[f"{v}/file_index"][i]))  # fmt: skip
                first = int(round(float(t[f"{v}/from_timestamp"][i]) * self.fps))
                span = float(t[f"{v}/to_timestamp"][i]) * self.fps - first
                if abs(span - length) > 1:
                    raise ValueError(f"meta/episodes of {self.root}: episode {ep} spans {span:.1f} frames of {video.name}, but has length {length}")  # fmt: skip
                if reader is None or reader.path != video or reader.position > first:
                    if reader is not None:
                        reader.close()
                    reader = VideoReader(video)
                reader.skip(first - reader.position)
                frames = reader.read(length)
                if len(frames) != length:
                    raise ValueError(f"video {video} ends after {reader.position} frames; episode {ep} needs frames {first}..{first + length - 1}")
                yield Episode(_resize_all(frames, resolution, fit), actions[:-1], state.astype(np.float32), state)
        finally:
            if reader is not None:
                reader.close()


class DinoWMSource(Source):
    """A DINO-WM dataset folder: ``states.pth`` [N, T, S] (or [N, T, P, D]), actions
    (``rel_actions.pth`` / ``abs_actions.pth`` or ``actions.pth``) [N, T, A], optional
    ``seq_lengths.pth`` / ``seq_lengths.pkl`` [N] and ``velocities.pth`` [N, T, 2], and
    observations ``obses/episode_{i:03d}.mp4``, ``obses/episode_{i:03d}.pth`` or
    ``{i:06d}/obses.pth``."""

    format = "dino_wm"

    def __init__(self, root: str | Path, actions: str | None = None):
        self.root = Path(root).absolute()
        if not (self.root / "states.pth").is_file():
            raise ValueError(f"not a DINO-WM dataset: {self.root / 'states.pth'} is missing")
        names = {"rel": "rel_actions.pth", "abs": "abs_actions.pth", "plain": "actions.pth"}
        if actions is None:
            actions = next((k for k in ("rel", "plain", "abs") if (self.root / names[k]).is_file()), None)
            if actions is None:
                raise ValueError(f"not a DINO-WM dataset: {self.root} has no rel_actions.pth, abs_actions.pth or actions.pth")
        if actions not in names:
            raise ValueError(f"DINO-WM actions must be one of {sorted(names)}, got {actions!r}")
        self.actions_name = names[actions]
        states_path, actions_path = self.root / "states.pth", self.root / self.actions_name
        states = _tensor_to_numpy(_load_pth(states_path), states_path).astype(np.float32, copy=False)  # float64 per episode
        self.actions = _tensor_to_numpy(_load_pth(actions_path), actions_path)
        if states.ndim == 4:  # deformable: [N, T, particles, D]; DINO-WM gives it a dummy proprio
            states, self.proprio_from = states.reshape(*states.shape[:2], -1), "none"
        elif states.ndim == 3:
            self.proprio_from = "states"
        else:
            raise ValueError(f"{states_path}: states must be [N, T, S] or [N, T, P, D], got shape {states.shape}")
        if self.actions.ndim != 3 or len(self.actions) != len(states):
            raise ValueError(f"{actions_path}: actions must be [N, T, A] with N = {len(states)} episodes, got shape {self.actions.shape}")
        velocities = self.root / "velocities.pth"
        if velocities.is_file():  # PushT: DINO-WM appends the agent velocity to states and proprio
            vel = _tensor_to_numpy(_load_pth(velocities), velocities).astype(np.float32, copy=False)
            if vel.shape[:2] != states.shape[:2] or vel.ndim != 3:
                raise ValueError(f"{velocities}: shape {vel.shape} does not match states {states.shape}")
            self.proprio = np.concatenate([states[..., :2], vel], -1)
            states, self.proprio_from = np.concatenate([states, vel], -1), "states[:2]+velocities"
        elif self.proprio_from == "states":
            self.proprio = states
        else:
            self.proprio = np.zeros((*states.shape[:2], 0), np.float32)
        self.states = states
        self.seq_lengths = self._seq_lengths(len(states), states.shape[1])
        if self.actions.shape[1] < self.seq_lengths.max() - 1:
            raise ValueError(f"{actions_path}: {self.actions.shape[1]} actions per episode, seq_lengths need {self.seq_lengths.max() - 1}")
        self.action_dim, self.state_dim, self.proprio_dim = self.actions.shape[2], states.shape[2], self.proprio.shape[2]

    def _seq_lengths(self, n: int, t: int) -> np.ndarray:
        pth, pkl = self.root / "seq_lengths.pth", self.root / "seq_lengths.pkl"
        if pth.is_file():
            lengths, path = _tensor_to_numpy(_load_pth(pth), pth), pth
        elif pkl.is_file():
            lengths, path = np.asarray(_load_plain_pickle(pkl)), pkl
        else:
            return np.full(n, t)
        if lengths.shape != (n,) or not np.issubdtype(lengths.dtype, np.integer) or lengths.min() < 2 or lengths.max() > t:
            raise ValueError(f"{path}: seq_lengths must be {n} ints in [2, {t}], got shape {lengths.shape} dtype {lengths.dtype}")
        return lengths.astype(np.int64)

    def description(self) -> dict:
        return {"format": self.format, "path": str(self.root), "actions": self.actions_name,
                "proprio": self.proprio_from, "episodes": len(self.states)}  # fmt: skip

    def _frames(self, i: int) -> tuple[np.ndarray, Path]:
        candidates = [self.root / "obses" / f"episode_{i:03d}.mp4", self.root / "obses" / f"episode_{i:03d}.pth", self.root / f"{i:06d}" / "obses.pth"]  # fmt: skip
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            raise ValueError(f"episode {i} has no observations: none of {[str(p.relative_to(self.root)) for p in candidates]} in {self.root}")
        if path.suffix == ".mp4":
            return read_video(path), path
        return _to_uint8_rgb(_tensor_to_numpy(_load_pth(path), path), path), path

    def episodes(self, start: int, resolution: int, fit: str) -> Iterator[Episode]:
        for i in range(start, len(self.states)):
            n = int(self.seq_lengths[i])
            frames, path = self._frames(i)
            if len(frames) < n:  # DINO-WM's loaders read frames [0, seq_length); more are ignored
                raise ValueError(f"{path}: {len(frames)} frames, but episode {i} has seq_length {n}")
            actions = _actions_2d(self.actions[i, : n - 1], self.root / self.actions_name)
            yield Episode(_resize_all(frames[:n], resolution, fit), actions,
                          self.proprio[i, :n].astype(np.float32), self.states[i, :n].astype(np.float64))  # fmt: skip


def make_source(fmt: str, source: str | Path, **options: Any) -> Source:
    """The ``Source`` of format ``fmt`` (one of ``FORMATS``); unset options take defaults."""
    options = {k: v for k, v in options.items() if v is not None}
    if fmt == "lerobot":
        return LeRobotSource(source, **options)
    if fmt == "mp4":
        return VideoFolderSource(source, **options)
    if fmt == "video":
        return VideoFolderSource(source, action_free=True, **options)
    if fmt == "dino_wm":
        return DinoWMSource(source, **options)
    raise ValueError(f"unknown import format {fmt!r}; known: {list(FORMATS)}")


# -- writing ----------------------------------------------------------------------------


def import_dataset(
    src: Source,
    out_dir: str | Path,
    resolution: int = 64,
    frameskip: int = 1,
    history: int = 1,
    fit: str = "crop",
    env: str | None = None,
    shard_episodes: int = 32,
    progress: bool = True,
) -> Path:
    """Write every episode of ``src`` into the wmplan dataset ``out_dir``; resumes a killed run.

    ``env`` (a wmplan env config name) labels the data as that env's, so ``wmplan-train env=...``
    accepts it; its action dimension must match. Returns the dataset path.
    """
    for name, value in (("resolution", resolution), ("frameskip", frameskip), ("history", history), ("shard_episodes", shard_episodes)):  # fmt: skip
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if fit not in FITS:
        raise ValueError(f"fit must be one of {FITS}, got {fit!r}")
    info = _import_info(src, resolution, frameskip, history, fit, env)
    out = Path(out_dir).absolute()
    done = _prepare(out, info)
    spaces = SimpleNamespace(
        observation_space=Dict(pixels=Box(0, 255, (resolution, resolution, 3), np.uint8),
                               proprio=Box(-np.inf, np.inf, (src.proprio_dim,), np.float32)),  # fmt: skip
        action_space=Box(-np.inf, np.inf, (src.action_dim,), np.float32),
    )
    from tqdm import tqdm

    episodes = (_buffer(ep) for ep in tqdm(src.episodes(done, resolution, fit), initial=done, disable=not progress,
                                           desc=f"import {src.format}"))
    write_in_shards(episodes, out, done, shard_episodes, spaces, info)
    return out


def _import_info(src: Source, resolution: int, frameskip: int, history: int, fit: str, env: str | None) -> dict:
    if env is None:
        labels = {"env": f"imported-{src.format}", "env_id": f"external/{src.format}", "env_version": None, "env_kwargs": {}}
    else:
        import gymnasium as gym

        from wmplan.envs.config import load_env_config

        cfg = load_env_config(env)
        action_dim = _env_action_dim(cfg)
        if action_dim != src.action_dim:
            raise ValueError(f"env {env!r} has {action_dim}-D actions, the imported data {src.action_dim}-D")
        labels = {"env": cfg.name, "env_id": cfg.id, "env_version": gym.spec(cfg.id).version, "env_kwargs": cfg.env_kwargs}
    info = {
        "format": FORMAT,
        **labels,
        "resolution": int(resolution),
        "frameskip": int(frameskip),
        "history": int(history),
        "episode_length": None,  # imported episodes vary in length
        "policy": f"import:{src.format}",
        "seed": 0,
        "wmplan_version": wmplan.__version__,
        "action_dim": int(src.action_dim),
        "proprio_dim": int(src.proprio_dim),
        "state_dim": int(src.state_dim),
        "action_free": bool(src.action_free),
        "source": {**src.description(), "fit": fit},
    }
    return json.loads(json.dumps(info))  # the form it takes on disk, so comparisons are exact


def _env_action_dim(cfg: Any) -> int:
    env = cfg.make()
    try:
        return int(env.action_space.shape[0])
    finally:
        env.close()


def _buffer(ep: Episode) -> EpisodeBuffer:
    n = len(ep.frames)
    return EpisodeBuffer(
        observations={"pixels": ep.frames, "proprio": np.asarray(ep.proprio, np.float32)},
        actions=np.asarray(ep.actions, np.float32),
        rewards=np.zeros(n - 1),
        terminations=np.zeros(n - 1, bool),
        truncations=np.r_[np.zeros(n - 2, bool), True],
        infos={"state": np.asarray(ep.states, np.float64)},
    )


# -- CLI ----------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m wmplan.data.importers", description="Import external video data as a wmplan dataset (see docs/DATA_IMPORT.md).")  # fmt: skip
    p.add_argument("format", choices=FORMATS)
    p.add_argument("source", help="the folder to import")
    p.add_argument("out_dir", help="the wmplan dataset to write (or to continue)")
    p.add_argument("--resolution", type=int, default=64, help="square frame side in pixels (default 64)")
    p.add_argument("--frameskip", type=int, default=1, help="env steps per planner step, recorded in wmplan.json (default 1)")
    p.add_argument("--history", type=int, default=1, help="context frames, recorded in wmplan.json (default 1)")
    p.add_argument("--fit", choices=FITS, default="crop", help="make frames square by centre crop (default) or black padding")
    p.add_argument("--env", default=None, help="label the data as this wmplan env config's (e.g. pusht); action dims must match")
    p.add_argument("--shard-episodes", type=int, default=32)
    p.add_argument("--camera", default=None, help="lerobot: video feature to import (default: the first)")
    p.add_argument("--action-key", default=None, help="lerobot: action column (default 'action')")
    p.add_argument("--state-key", default=None, help="lerobot: state column (default 'observation.state')")
    p.add_argument("--actions-key", default=None, help="mp4: npz key / parquet column of the actions (default 'actions')")
    p.add_argument("--action-dim", type=int, default=None, help="video: the declared action dimension (zeros are stored)")
    p.add_argument("--dino-actions", choices=("rel", "abs", "plain"), default=None, help="dino_wm: rel_actions.pth, abs_actions.pth or actions.pth")  # fmt: skip
    p.add_argument("--no-progress", action="store_true")
    return p


@reports_user_errors("wmplan-import")
def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    options: dict[str, Any] = {
        "lerobot": {"camera": args.camera, "action_key": args.action_key, "state_key": args.state_key},
        "mp4": {"actions_key": args.actions_key, "action_dim": args.action_dim},
        "video": {"action_dim": args.action_dim},
        "dino_wm": {"actions": args.dino_actions},
    }[args.format]
    src = make_source(args.format, args.source, **options)
    out = import_dataset(src, args.out_dir, resolution=args.resolution, frameskip=args.frameskip, history=args.history,
                         fit=args.fit, env=args.env, shard_episodes=args.shard_episodes, progress=not args.no_progress)  # fmt: skip
    info = load_dataset_info(out)
    flag = " (action-free)" if info.get("action_free") else ""
    print(f"{out}: {info['num_episodes']} episodes, {info['num_steps']} steps imported from {args.format}{flag}")


if __name__ == "__main__":
    main(sys.argv[1:])
