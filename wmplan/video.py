"""Writing GIF / MP4 videos and picture grids of uint8 frames (imageio), labelled with PIL."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import imageio.v3 as iio
import numpy as np
from PIL import Image, ImageDraw, ImageFont

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


def upscale(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of frames [T, h, w, 3] to [T, height, width, 3]: pixels stay sharp squares."""
    h, w = frames.shape[1:3]
    rows, cols = np.arange(height) * h // height, np.arange(width) * w // width
    return frames[:, rows][:, :, cols]


def labelled_panels(panels: dict[str, np.ndarray], captions: Sequence[str], min_size: int = 256,
                    font_size: int = 16, pad: int = 4) -> np.ndarray:
    """Videos [T, h, w, 3] side by side, each upscaled (nearest neighbour, by the integer factor
    that brings the first to at least ``min_size`` px) under its name, with one caption line
    per frame below: uint8 [T, H', W', 3], even-sized (H.264 needs it)."""
    first = next(iter(panels.values()))
    scale = -(-min_size // min(first.shape[1:3]))
    ph, pw = first.shape[1] * scale, first.shape[2] * scale
    bar = font_size + 2 * pad
    height, width = 2 * bar + ph, len(panels) * (pw + pad) + pad
    font = ImageFont.load_default(size=font_size)
    header = Image.new("RGB", (width + width % 2, height + height % 2), "white")
    draw = ImageDraw.Draw(header)
    for i, name in enumerate(panels):
        draw.text((pad + i * (pw + pad) + pw // 2, bar // 2), name, fill="black", font=font, anchor="mm")
    out = np.repeat(np.asarray(header)[None], len(first), axis=0)
    for i, frames in enumerate(panels.values()):
        left = pad + i * (pw + pad)
        out[:, bar:bar + ph, left:left + pw] = upscale(frames, ph, pw)
    for frame, caption in zip(out, captions):
        strip = Image.fromarray(frame[bar + ph:])
        ImageDraw.Draw(strip).text((pad, bar // 2), caption, fill="black", font=font, anchor="lm")
        frame[bar + ph:] = np.asarray(strip)
    return out
