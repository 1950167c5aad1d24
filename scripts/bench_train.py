"""Training throughput of NanoWM against this machine: samples/s, achieved GFLOP/s and the
fraction of the measured matmul peak at the precision in use.

One step = forward + backward + AdamW on an MSE loss (the diffusion loss adds negligible
compute). Default: NanoWM-S/2 at latent 8x8x4, 4 frames, batch 8, ``--precision auto`` (what
``wmplan-train`` picks here). The last line is ``peak fraction: <0.NN>``.

    .venv/bin/python scripts/bench_train.py [--size S --patch 2 --batch 8 --steps 10 --precision auto]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from wmplan.hardware import autocast, bf16_speedup, cpu_name, matmul_peak, resolve_precision, tune_cpu_allocator
from wmplan.models.nanowm import NanoWM, nanowm_config, shift_actions
from wmplan.module import fast_adamw


def make_batch(cfg, batch: int, frames: int, generator: torch.Generator) -> dict:
    h, w = cfg.latent_hw
    x = torch.randn(batch, frames, cfg.latent_channels, h, w, generator=generator)
    return {
        "x": x,
        "t": torch.rand(batch, frames, generator=generator) * 1000,
        "actions": shift_actions(torch.randn(batch, frames - 1, cfg.action_dim, generator=generator)),
        "target": torch.randn(x.shape, generator=generator),
    }


def train_step(model: NanoWM, optimizer: torch.optim.Optimizer, batch: dict, precision: str) -> None:
    with autocast(precision):
        out, _ = model(batch["x"], batch["t"], batch["actions"])
    loss = (out.float() - batch["target"]).pow(2).mean()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def step_flops(model: NanoWM, batch: dict, precision: str) -> int:
    """FLOPs of one forward + backward (matmuls and attention), counted by FlopCounterMode."""
    counter = FlopCounterMode(display=False)
    with counter:
        with autocast(precision):
            out, _ = model(batch["x"], batch["t"], batch["actions"])
        (out.float() - batch["target"]).pow(2).mean().backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::_scaled_dot_product_flash_attention_for_cpu",
              "aten::_scaled_dot_product_flash_attention_for_cpu_backward")


def matmul_time(model: NanoWM, optimizer: torch.optim.Optimizer, batch: dict, precision: str, steps: int = 2) -> float:
    """Seconds per step spent in matmul and attention kernels (profiler self time)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            train_step(model, optimizer, batch, precision)
    return sum(e.self_cpu_time_total for e in prof.key_averages() if e.key in MATMUL_OPS) / 1e6 / steps


def bench(args: argparse.Namespace, precision: str, compiled: bool = False) -> float:
    """Time training steps at ``precision`` (``compiled``: under torch.compile); print a line
    and return the achieved GFLOP/s."""
    torch.manual_seed(0)
    cfg = nanowm_config(args.size, args.patch, latent_size=args.latent, action_dim=args.action_dim)
    model = NanoWM(cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01, **fast_adamw(torch.device("cpu")))
    batch = make_batch(cfg, args.batch, args.frames, torch.Generator().manual_seed(0))
    flops = step_flops(model, batch, precision)
    if compiled:
        model.compile()  # as wmplan-train with training.compile=true
        start = time.perf_counter()
        train_step(model, optimizer, batch, precision)
        print(f"torch.compile: first step {time.perf_counter() - start:.0f} s")
    for _ in range(args.warmup):
        train_step(model, optimizer, batch, precision)
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        train_step(model, optimizer, batch, precision)
        times.append(time.perf_counter() - start)
    best, median = min(times), sorted(times)[len(times) // 2]
    gflops = flops / median / 1e9
    print(
        f"NanoWM-{args.size}/{args.patch} {precision:5s} | {median * 1e3:7.1f} ms/step (best {best * 1e3:.1f}) | "
        f"{args.batch / median:6.2f} samples/s (best {args.batch / best:.2f}) | "
        f"{flops / 1e9:6.1f} GFLOP/step | {gflops:6.1f} GFLOP/s" + (" | compiled" if compiled else "")
    )
    if not compiled:
        matmul_seconds = matmul_time(model, optimizer, batch, precision)
        print(f"  matmul kernels alone: {matmul_seconds / median:.0%} of the step, {flops / matmul_seconds / 1e9:.0f} "
              f"GFLOP/s at this model's shapes (the ceiling of this batch's peak fraction)")
    return gflops


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
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    parser.add_argument("--precision", default="auto", help="auto | bf16 | fp32")
    parser.add_argument("--compare", action="store_true", help="also time the other precision, side by side")
    parser.add_argument("--compile", action="store_true",
                        help="also time the model under torch.compile (training.compile=true); its figure is the last line's")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    tune_cpu_allocator()
    precision = resolve_precision(args.precision)
    n_params = sum(p.numel() for p in NanoWM(nanowm_config(args.size, args.patch)).parameters())
    print(f"machine: {cpu_name()} | torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"precision: {precision} ({'auto; bf16 matmul %.2fx fp32' % bf16_speedup() if args.precision == 'auto' else 'given'})")
    print(f"NanoWM-{args.size}/{args.patch}: {n_params / 1e6:.2f}M params at the reference shape; here latent "
          f"{args.latent}x{args.latent}x4, {args.frames} frames, batch {args.batch}")
    if args.compare:
        bench(args, "fp32" if precision == "bf16" else "bf16")
    gflops = bench(args, precision)
    if args.compile:
        gflops = bench(args, precision, compiled=True)
    peak = matmul_peak(torch.bfloat16 if precision == "bf16" else torch.float32)
    print(f"matmul peak at {precision}: {peak:.0f} GFLOP/s")
    print(f"peak fraction: {gflops / peak:.2f}")


if __name__ == "__main__":
    main()
