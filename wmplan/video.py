"""Writing GIF / MP4 videos and picture grids of uint8 frames (imageio)."""

from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import numpy as np

from wmplan.atomic import atomic_path


def save_video(path: str | Path, frames: np.ndarray, fps: int = 4) -> Path:
    """Write frames uint8 [T, H, W, 3] to ``path`` (.gif or .mp4), atomically."""
    path = Path(path)
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}")
    with atomic_path(path) as tmp:
        if path.suffix == ".gif":
            iio.imwrite(tmp, frames, duration=1000 / fps, loop=0)
        else:
            iio.imwrite(tmp, frames, fps=fps, codec="libx264", macro_block_size=1)
    return path


def tile(rows: list[np.ndarray], pad: int = 2) -> np.ndarray:
    """Stack equally-shaped [T, H, W, 3] videos side by side with a white gap: [T, H, W', 3]."""
    t, h = rows[0].shape[:2]
    gap = np.full((t, h, pad, 3), 255, np.uint8)
    parts = [p for r in rows for p in (r, gap)][:-1]
    return np.concatenate(parts, axis=2)


def save_comparison_gif(
    path: str | Path, context: np.ndarray, pred: np.ndarray, truth: np.ndarray, fps: int = 4
) -> Path:
    """GIF of clips [B, T, H, W, 3]: each row shows context+prediction | context+ground truth."""
    left = np.concatenate([context, pred], axis=1)  # [B, T, H, W, 3]
    right = np.concatenate([context, truth], axis=1)
    rows = [tile([left[b], right[b]]) for b in range(left.shape[0])]
    return save_video(path, np.concatenate(rows, axis=1), fps)
