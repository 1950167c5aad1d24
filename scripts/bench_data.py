"""Data pipeline throughput: collection episodes/s and ClipDataset random-access clips/s.

Collects a fresh dataset into a temporary directory (or --out), then reads random clips
directly and through a torch DataLoader with 0 and 2 workers.

    .venv/bin/python scripts/bench_data.py [--env wall --episodes 40 --frames 4 --clips 2000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from wmplan.data.collect import collect
from wmplan.data.dataset import CACHE_DIR, ClipDataset
from wmplan.envs.config import load_env_config


def bench_collect(args, out: Path) -> None:
    cfg = load_env_config(args.env, resolution=args.resolution)
    start = time.perf_counter()
    collect(cfg, args.episodes, cfg.policy, 0, out, progress=False)
    seconds = time.perf_counter() - start
    steps = args.episodes * cfg.episode_length
    print(f"collect {args.env} ({cfg.policy}, {args.resolution} px, {cfg.episode_length} steps/episode): "
          f"{args.episodes / seconds:.2f} episodes/s, {steps / seconds:.0f} env steps/s")  # fmt: skip


def bench_clips(args, out: Path) -> None:
    frameskip = load_env_config(args.env).frameskip
    start = time.perf_counter()
    clips = ClipDataset(out, args.frames, frameskip, split="train", val_fraction=0.1, seed=0)
    print(f"first ClipDataset (builds {CACHE_DIR}/): {time.perf_counter() - start:.2f} s, {len(clips)} clips")
    order = np.random.default_rng(0).integers(len(clips), size=args.clips)
    start = time.perf_counter()
    for i in order:
        clips[int(i)]
    print(f"random access, no DataLoader: {args.clips / (time.perf_counter() - start):.0f} clips/s")
    subset = Subset(clips, order.tolist())
    for workers in (0, 2):
        loader = DataLoader(subset, batch_size=args.batch, num_workers=workers, persistent_workers=workers > 0)
        for _ in loader:  # warm-up pass: starts the workers, which open the cache
            pass
        start = time.perf_counter()
        for _ in loader:
            pass
        seconds = time.perf_counter() - start
        print(f"DataLoader batch {args.batch}, num_workers={workers}: {args.clips / seconds:.0f} clips/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--env", default="wall", help="a wmplan/configs/env name")
    parser.add_argument("--episodes", type=int, default=40)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--frames", type=int, default=4, help="frames per clip")
    parser.add_argument("--clips", type=int, default=2000, help="random clips to read")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--out", type=Path, default=None, help="dataset directory (default: a temporary one)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp) / "data"
        bench_collect(args, out)
        bench_clips(args, out)


if __name__ == "__main__":
    main()
