"""Planning compute: seconds per CEM replan and model forward throughput, random weights.

    python scripts/bench_plan.py                       # mini model, Wall latents, demo CEM + DINO-WM CEM (1 iteration x 30)
    python scripts/bench_plan.py --full                # time all 30 DINO-WM iterations
    python scripts/bench_plan.py --quick               # tiny model, demo CEM, 1 sampling step
    python scripts/bench_plan.py --model tiny --episodes 4 --steps 1 3 --precisions bf16 fp32

A replan is one ``planner.plan`` call for B episodes (every candidate rolled out by the world
model with the planning sampler, full_sequence schedule). The world model is built from the
``train`` config (``model=<size> experiment=<recipe>``) with random weights: planning cost does
not depend on what the weights are. Sizes the trainer reads from a dataset come from the codec
and the environment instead.
"""

from __future__ import annotations

import argparse
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Sequence

import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from wmplan.envs import make
from wmplan.models.codecs import CodecConfig, build_codec
from wmplan.module import WorldModelModule
from wmplan.planners import build_objective, build_planner
from wmplan.planners.mpc import obs_batch, observe, sample_episodes
from wmplan.rollout import WorldModel, planning_sampler
from wmplan.train import CONFIG_DIR

PRECISIONS = ("bf16", "fp32")


def compose_config(name: str, overrides: Sequence[str]) -> DictConfig:
    """A Hydra config of ``configs/`` composed outside a Hydra app."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(name, overrides=list(overrides))


def make_env(cfg: DictConfig):
    """The planner-level env of a train config (frameskip applied)."""
    env = cfg.env
    return make(env.id, frameskip=env.frameskip, resolution=env.resolution, **env.env_kwargs)


def random_world_model(overrides: Sequence[str], seed: int = 0) -> WorldModel:
    """A ``WorldModel`` with seeded random weights from ``train`` config ``overrides``.

    Like ``wmplan.train.complete_config`` but without a dataset: latent shape from the codec,
    action and proprio widths from the environment's spaces.
    """
    cfg = compose_config("train", overrides)
    codec = build_codec(CodecConfig(**cfg.latent))
    env = make_env(cfg)
    OmegaConf.set_struct(cfg, False)
    cfg.model.latent_channels, cfg.model.latent_size = codec.latent_shape[0], codec.latent_shape[1]
    cfg.model.action_dim = int(env.action_space.shape[0])
    cfg.model.proprio_dim = int(env.observation_space["proprio"].shape[0]) if cfg.data.use_proprio else 0
    env.close()
    torch.manual_seed(seed)
    module = WorldModelModule(cfg, codec=codec)
    return WorldModel(module, planning_sampler(cfg.diffusion.objective))


def start_and_goal(wm: WorldModel, episodes: int, seed: int) -> tuple[dict, dict]:
    """Encoded start observations (the context) and goals of ``episodes`` env episodes."""
    env = make_env(wm.module.cfg)
    pairs = sample_episodes(env, episodes, seed)
    start = wm.encode(obs_batch([observe(env, s) for s, _ in pairs]))
    goal = wm.encode(obs_batch([observe(env, g) for _, g in pairs]))
    env.close()
    return start, goal


def autocast(precision: str):
    """bf16 autocast on the CPU, or nothing for fp32."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else nullcontext()


def time_replan(wm: WorldModel, planner_cfg: dict[str, Any], episodes: int, horizon: int, steps: int,
                precision: str, repeats: int = 1, seed: int = 0) -> float:
    """Seconds of one ``planner.plan`` call for ``episodes`` episodes (the fastest of ``repeats``)."""
    if episodes < 1 or repeats < 1:
        raise ValueError(f"episodes and repeats must be >= 1, got {episodes}, {repeats}")
    context, goal = start_and_goal(wm, episodes, seed)
    sampler = planning_sampler(wm.module.cfg.diffusion.objective, steps=steps)
    planner = build_planner(planner_cfg)
    objective = build_objective(compose_config("plan", []).objective)
    with torch.no_grad(), autocast(precision):  # untimed warm-up: one-time kernel set-up
        wm.rollout(context, torch.zeros(episodes, 1, horizon, wm.action_dim), sampler=sampler, seed=seed)
    times = []
    for _ in range(repeats):
        generator = torch.Generator().manual_seed(seed)
        start = time.perf_counter()
        with torch.no_grad(), autocast(precision):
            planner.plan(lambda a: wm.rollout(context, a, sampler=sampler, seed=seed), objective, goal,
                         episodes, horizon, wm.action_dim, None, generator, frameskip=wm.frameskip)
        times.append(time.perf_counter() - start)
    return min(times)


def tokens_per_frame(wm: WorldModel) -> int:
    """Tokens one latent frame becomes: p x p patches plus the proprio token, if any."""
    m = wm.model.cfg
    h, w = m.latent_hw
    return (h // m.patch_size) * (w // m.patch_size) + int(m.proprio_dim > 0)


def forward_throughput(wm: WorldModel, candidates: int, frames: int, precision: str, repeats: int = 1,
                       seed: int = 0) -> dict[str, float]:
    """One denoiser forward over ``candidates`` x ``frames`` latent frames: seconds and tokens/s."""
    m = wm.model.cfg
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(candidates, frames, m.latent_channels, *m.latent_hw, generator=g)
    t = torch.rand(candidates, frames, generator=g) * 1000
    actions = torch.rand(candidates, frames, m.action_dim, generator=g) * 2 - 1
    proprio = torch.randn(candidates, frames, m.proprio_dim, generator=g) if m.proprio_dim else None
    with torch.no_grad(), autocast(precision):  # untimed warm-up: one-time kernel set-up
        wm.model(x, t, actions, proprio)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        with torch.no_grad(), autocast(precision):
            wm.model(x, t, actions, proprio)
        times.append(time.perf_counter() - start)
    seconds, tokens = min(times), tokens_per_frame(wm)
    return {"seconds": seconds, "tokens_per_frame": tokens, "tokens_per_s": candidates * frames * tokens / seconds}


def planner_settings(full: bool, quick: bool) -> list[tuple[str, dict[str, Any], int]]:
    """(label, planner config, x factor) per CEM setting: the demo config and DINO-WM's.

    Without ``full`` DINO-WM's CEM runs one iteration and the time is multiplied by its count.
    """
    demo = OmegaConf.to_container(OmegaConf.load(Path(CONFIG_DIR) / "planner" / "cem.yaml"))
    settings = [(f"demo cem {demo['num_samples']}x{demo['iterations']}", demo, 1)]
    if quick:
        return settings
    dino = OmegaConf.to_container(OmegaConf.load(Path(CONFIG_DIR) / "planner" / "cem_dino_wm.yaml"))
    label = f"dino-wm cem {dino['num_samples']}x{dino['iterations']}"
    if full:
        return settings + [(label, dino, 1)]
    return settings + [(label + f" (1 iteration x{dino['iterations']})", {**dino, "iterations": 1}, dino["iterations"])]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="mini", help="configs/model/<name> (mini, tiny, nanowm_s2, ...)")
    p.add_argument("--experiment", default="wall", help="configs/experiment/<name>: env and latent shape")
    p.add_argument("--override", nargs="*", default=[], help="extra train-config overrides, e.g. latent.pixel_size=8")
    p.add_argument("--episodes", type=int, default=1, help="episodes planned together in one replan")
    p.add_argument("--horizon", type=int, default=5)
    p.add_argument("--steps", type=int, nargs="+", default=[1, 3], help="sampling steps per rollout")
    p.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=PRECISIONS)
    p.add_argument("--repeats", type=int, default=1, help="timings per cell; the fastest is kept")
    p.add_argument("--full", action="store_true", help="time all DINO-WM CEM iterations instead of 1 x 30")
    p.add_argument("--quick", action="store_true", help="tiny model, demo CEM only, 1 step")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.quick:
        args.model, args.steps = "tiny", [1]
    return args


def print_replans(wm: WorldModel, args: argparse.Namespace) -> None:
    print(f"\n{'setting':<40} {'precision':>9} {'steps':>5} {'s/replan':>10}")
    for label, planner_cfg, factor in planner_settings(args.full, args.quick):
        for steps in args.steps:
            row = {}
            for precision in args.precisions:
                seconds = factor * time_replan(wm, planner_cfg, args.episodes, args.horizon, steps, precision,
                                               args.repeats, args.seed)
                row[precision] = seconds
                print(f"{label:<40} {precision:>9} {steps:>5} {seconds:>10.3f}", flush=True)
            if len(row) == 2:
                print(f"{'':<40} {'fp32/bf16':>9} {steps:>5} {row['fp32'] / row['bf16']:>9.2f}x", flush=True)


def print_throughput(wm: WorldModel, args: argparse.Namespace) -> None:
    """One forward over the largest setting's candidates (all episodes) x the model window."""
    largest = planner_settings(args.full, args.quick)[-1][1]
    candidates, frames = largest["num_samples"] * args.episodes, wm.window
    print(f"\nmodel forward: {candidates} candidates x {frames} frames x {tokens_per_frame(wm)} tokens")
    seconds = {}
    for precision in args.precisions:
        r = forward_throughput(wm, candidates, frames, precision, args.repeats, args.seed)
        seconds[precision] = r["seconds"]
        print(f"  {precision}: {r['seconds']:.3f} s, {r['tokens_per_s']:,.0f} tokens/s, "
              f"{candidates * frames / r['seconds']:,.0f} frames/s", flush=True)
    if len(seconds) == 2:
        print(f"  fp32/bf16: {seconds['fp32'] / seconds['bf16']:.2f}x")


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    overrides = [f"model={args.model}", f"experiment={args.experiment}", *args.override]
    wm = random_world_model(overrides, args.seed)
    params = sum(p.numel() for p in wm.model.parameters())
    print(f"world model: {' '.join(overrides)} | {params / 1e6:.2f}M parameters | latent "
          f"{tuple(wm.module.codec.latent_shape)} | {tokens_per_frame(wm)} tokens/frame | action dim {wm.action_dim}"
          f" | {args.episodes} episode(s), horizon {args.horizon} | {torch.get_num_threads()} threads")
    print_throughput(wm, args)
    print_replans(wm, args)


if __name__ == "__main__":
    main()
