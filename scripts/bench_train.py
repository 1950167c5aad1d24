"""Training throughput of NanoWM on this machine: samples/s and achieved matmul GFLOP/s.

One step = forward + backward + AdamW on an MSE loss (the diffusion loss adds negligible
compute). Default: NanoWM-S/2 at latent 8x8x4, 4 frames, batch 8, bf16 autocast and fp32.

    .venv/bin/python scripts/bench_train.py [--size S --patch 2 --batch 8 --steps 10]
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from wmplan.models.nanowm import NanoWM, nanowm_config, shift_actions


def make_batch(cfg, batch: int, frames: int, generator: torch.Generator) -> dict:
    h, w = cfg.latent_hw
    x = torch.randn(batch, frames, cfg.latent_channels, h, w, generator=generator)
    return {
        "x": x,
        "t": torch.rand(batch, frames, generator=generator) * 1000,
        "actions": shift_actions(torch.randn(batch, frames - 1, cfg.action_dim, generator=generator)),
        "target": torch.randn(x.shape, generator=generator),
    }


def train_step(model: NanoWM, optimizer: torch.optim.Optimizer, batch: dict, bf16: bool) -> None:
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    with autocast:
        out, _ = model(batch["x"], batch["t"], batch["actions"])
    loss = (out.float() - batch["target"]).pow(2).mean()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def step_flops(model: NanoWM, batch: dict, bf16: bool) -> int:
    """FLOPs of one forward + backward (matmuls and attention), counted by FlopCounterMode."""
    counter = FlopCounterMode(display=False)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    with counter:
        with autocast:
            out, _ = model(batch["x"], batch["t"], batch["actions"])
        (out.float() - batch["target"]).pow(2).mean().backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def bench(args: argparse.Namespace, bf16: bool) -> None:
    torch.manual_seed(0)
    cfg = nanowm_config(args.size, args.patch, latent_size=args.latent, action_dim=args.action_dim)
    model = NanoWM(cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01, fused=True)
    batch = make_batch(cfg, args.batch, args.frames, torch.Generator().manual_seed(0))
    flops = step_flops(model, batch, bf16)
    for _ in range(args.warmup):
        train_step(model, optimizer, batch, bf16)
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        train_step(model, optimizer, batch, bf16)
        times.append(time.perf_counter() - start)
    best, median = min(times), sorted(times)[len(times) // 2]
    name = "bf16 autocast" if bf16 else "fp32"
    print(
        f"NanoWM-{args.size}/{args.patch} {name:13s} | {median * 1e3:7.1f} ms/step (best {best * 1e3:.1f}) | "
        f"{args.batch / median:6.2f} samples/s (best {args.batch / best:.2f}) | "
        f"{flops / 1e9:6.1f} GFLOP/step | {flops / median / 1e9:6.1f} GFLOP/s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="S")
    parser.add_argument("--patch", type=int, default=2)
    parser.add_argument("--latent", type=int, default=8)
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--action-dim", type=int, default=7)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precision", choices=["both", "bf16", "fp32"], default="both")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    n_params = sum(p.numel() for p in NanoWM(nanowm_config(args.size, args.patch)).parameters())
    print(f"torch {torch.__version__}, {args.threads} threads, {n_params / 1e6:.2f}M params, "
          f"latent {args.latent}x{args.latent}x4, {args.frames} frames, batch {args.batch}")
    if args.precision in ("both", "bf16"):
        bench(args, bf16=True)
    if args.precision in ("both", "fp32"):
        bench(args, bf16=False)


if __name__ == "__main__":
    main()
