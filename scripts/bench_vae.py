"""Training speed of the `trained_vae` codec (wmplan-train-vae): seconds per step, bf16 vs fp32.

One step = encode, sample, decode, L1 + KL loss, backward, AdamW, on random 64 px frames with
the default VAETrainConfig (wmplan/configs/train_vae.yaml), through the same `_fit` loop training uses.

    .venv/bin/python scripts/bench_vae.py [--steps 3 --batch 32 --size 64]
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np
import torch

from wmplan.train_vae import VAETrainConfig, _fit, _new_vae


def seconds_per_step(cfg: VAETrainConfig, frames: np.ndarray, steps: int) -> float:
    """Mean seconds per `_fit` step after one warm-up step, for a fresh VAE."""
    torch.manual_seed(cfg.seed)
    vae = _new_vae(cfg, resolution=frames.shape[1])
    device = torch.device("cpu")
    _fit(vae, frames, dataclasses.replace(cfg, steps=1), device)
    start = time.perf_counter()
    _fit(vae, frames, dataclasses.replace(cfg, steps=steps), device)
    return (time.perf_counter() - start) / steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--size", type=int, default=64)
    args = p.parse_args()
    frames = np.random.default_rng(0).integers(0, 256, (256, args.size, args.size, 3), dtype=np.uint8)
    cfg = VAETrainConfig(batch_size=args.batch, log_every=10**9)
    print(f"VAE {cfg.block_out_channels}, batch {args.batch}, {args.size} px, {torch.get_num_threads()} threads")
    times = {p: seconds_per_step(dataclasses.replace(cfg, precision=p), frames, args.steps) for p in ("32", "bf16-mixed")}
    for precision, t in times.items():
        print(f"  {precision:<10} {t:6.2f} s/step")
    print(f"  bf16 speed-up {times['32'] / times['bf16-mixed']:.2f}x")


if __name__ == "__main__":
    main()
