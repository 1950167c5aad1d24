"""Planning compute against this machine: seconds per CEM replan, candidate rollouts per second,
and achieved GFLOP/s as a fraction of the measured matmul peak.

    python scripts/bench_plan.py                        # mini Wall model, random weights: cem + cem_dino_wm, 1 and 50 episodes
    python scripts/bench_plan.py --checkpoint PATH      # a trained world model instead
    python scripts/bench_plan.py --precision fp32       # force a precision (default: auto, as wmplan-plan)
    python scripts/bench_plan.py --quick                # tiny model, 1 episode, cem only: a smoke test

Three rollout paths of the same model, timed side by side in one run:
- ``legacy``: the path before the context cache: 3 DDIM steps, context frames recomputed in
  every model call, one noise generator per candidate;
- ``cached``: the new path (context cache, per-episode noise shared by the candidates, tuned
  allocator) at the legacy path's 3 steps: what the cache and batching alone give;
- ``default``: the new path at ``wmplan/configs/plan.yaml``'s step count (1);
- ``recipe`` (with ``--recipe-checkpoint``): the default path on another model, e.g. one with
  fewer tokens per frame (``experiment=wall_vae model.patch_size=8``).
A replan is one ``planner.plan`` call for all episodes together. Replans that would run
longer than ``--max-seconds`` are timed over one CEM iteration and scaled to the planner's
iteration count, and the table says so. FLOPs (matmuls and attention, ``FlopCounterMode``) are counted on a
small rollout and scaled per candidate. The legacy path is timed first, with glibc's default
allocator, as it ran before; the others after ``tune_cpu_allocator``. The last line is
``speedup: <N>x``: the legacy path's seconds per replan over the default path's, the smallest
over the planners at the largest episode count.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from typing import Any, Sequence

import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf
from torch.utils.flop_counter import FlopCounterMode

from wmplan.config_dir import CONFIG_DIR
from wmplan.envs import make
from wmplan.hardware import autocast, bf16_speedup, cpu_name, matmul_peak, tune_cpu_allocator
from wmplan.models.codecs import CodecConfig, build_codec
from wmplan.models.sampling import SamplerConfig, generate
from wmplan.module import WorldModelModule
from wmplan.planners import build_objective, build_planner
from wmplan.planners.mpc import obs_batch, observe, sample_episodes
from wmplan.rollout import WorldModel
from wmplan.seeding import stream_seed

LEGACY_STEPS = 3
PATHS = ("legacy", "cached", "default")


def compose_config(name: str, overrides: Sequence[str]) -> DictConfig:
    """A Hydra config of ``wmplan/configs/`` composed outside a Hydra app."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(name, overrides=list(overrides))


def make_env(cfg: DictConfig):
    """The planner-level env of a train config (frameskip applied)."""
    env = cfg.env
    return make(env.id, frameskip=env.frameskip, resolution=env.resolution, **env.env_kwargs)


def plan_sampler(wm: WorldModel, steps: int | None = None) -> SamplerConfig:
    """``wmplan/configs/plan.yaml``'s sampler, at ``steps`` if given."""
    sampler = OmegaConf.to_container(compose_config("plan", []).sampler)  # kind and context level: from the model
    return SamplerConfig(**{**sampler, **({} if steps is None else {"steps": steps})})


def random_world_model(overrides: Sequence[str], seed: int = 0, precision: str = "auto") -> WorldModel:
    """A ``WorldModel`` with seeded random weights from ``train`` config ``overrides``.

    Like ``wmplan.train.complete_config`` but without a dataset: latent shape from the codec,
    action and proprio widths from the environment's spaces. Planning cost does not depend on
    what the weights are.
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
    return WorldModel(module, SamplerConfig(), precision=precision)


def start_and_goal(wm: WorldModel, episodes: int, seed: int) -> tuple[dict, dict]:
    """Encoded start observations (the context) and goals of ``episodes`` env episodes."""
    env = make_env(wm.module.cfg)
    pairs = sample_episodes(env, episodes, seed)
    start = wm.encode(obs_batch([observe(env, s) for s, _ in pairs]))
    goal = wm.encode(obs_batch([observe(env, g) for _, g in pairs]))
    env.close()
    return start, goal


def legacy_rollout(wm: WorldModel, context: dict, sampler: SamplerConfig):
    """The rollout before the context cache: the context repeated per candidate and rerun in
    every call, one generator per candidate, at ``sampler``'s settings with the cache off."""
    sampler = dataclasses.replace(sampler, context_cache=False)
    latents, proprio = context["latents"][:, None], context["proprio"]
    proprio = None if proprio is None else proprio[:, None]

    def rollout(actions: torch.Tensor) -> dict:
        b, s = actions.shape[:2]
        generators = [torch.Generator().manual_seed(stream_seed(0, i)) for i in range(b * s)]
        with autocast(wm.precision):
            out, out_p = generate(wm.model, wm.module.diffusion, latents.repeat_interleave(s, 0),
                                  None if proprio is None else proprio.repeat_interleave(s, 0),
                                  actions.flatten(0, 1), sampler, wm.window, generators)
        return {"latents": out.float().unflatten(0, (b, s)),
                "proprio": None if out_p is None else out_p.float().unflatten(0, (b, s))}

    return rollout


def rollout_fn(wm: WorldModel, context: dict, path: str, steps: int):
    """The rollout function of ``path`` (``PATHS``) for ``context``; ``cached`` and ``default``
    are the same code, at different step counts."""
    if path == "legacy":
        return legacy_rollout(wm, context, plan_sampler(wm, steps))
    sampler = plan_sampler(wm, steps)
    seeds = [stream_seed(0, b) for b in range(context["latents"].shape[0])]
    return lambda actions: wm.rollout(context, actions, sampler=sampler, seed=seeds)


@torch.no_grad()
def rollout_flops(wm: WorldModel, path: str, steps: int, horizon: int, candidates: int = 32) -> float:
    """FLOPs of one candidate's rollout (matmuls and attention), counted over ``candidates``."""
    context, _ = start_and_goal(wm, 1, seed=0)
    actions = torch.zeros(1, candidates, horizon, wm.action_dim)
    counter = FlopCounterMode(display=False)
    with counter:
        rollout_fn(wm, context, path, steps)(actions)
    return counter.get_total_flops() / candidates


@torch.no_grad()
def time_replan(wm: WorldModel, planner_cfg: dict[str, Any], episodes: int, horizon: int, path: str,
                steps: int, max_seconds: float = 60.0, seed: int = 0) -> tuple[float, int]:
    """Seconds of one ``planner.plan`` call for ``episodes`` episodes along ``path``, and the
    CEM iterations actually timed.

    One iteration is timed first; when the full replan would take more than ``max_seconds``
    that time is scaled to the planner's iteration count (CEM iterations all cost the same),
    else the full replan is timed.
    """
    context, goal = start_and_goal(wm, episodes, seed)
    objective = build_objective(compose_config("plan", []).objective)
    rollout = rollout_fn(wm, context, path, steps)
    rollout(torch.zeros(episodes, 2, horizon, wm.action_dim))  # untimed warm-up: one-time kernel set-up
    full = int(planner_cfg.get("iterations", 1))

    def run(iterations: int) -> float:
        planner = build_planner({**planner_cfg, "iterations": iterations})
        generators = [torch.Generator().manual_seed(stream_seed(seed, b)) for b in range(episodes)]
        start = time.perf_counter()
        planner.plan(rollout, objective, goal, episodes, horizon, wm.action_dim, None, generators,
                     frameskip=wm.frameskip)
        return time.perf_counter() - start

    one = run(1)
    if full == 1 or one * full > max_seconds:
        return one * full, 1
    return run(full), full


def planner_settings(quick: bool) -> list[tuple[str, dict[str, Any]]]:
    """(label, planner config): the CPU-budget ``cem`` and DINO-WM's ``cem_dino_wm``."""
    names = ("cem",) if quick else ("cem", "cem_dino_wm")
    settings = []
    for name in names:
        cfg = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "planner" / f"{name}.yaml"))
        settings.append((f"{name} {cfg['num_samples']}x{cfg['iterations']}", cfg))
    return settings


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="a trained world model (default: random weights from --model/--experiment)")
    p.add_argument("--recipe-checkpoint", help="a second world model timed on the default path as 'recipe'")
    p.add_argument("--model", default="mini", help="wmplan/configs/model/<name> (mini, tiny, nanowm_s2, ...)")
    p.add_argument("--experiment", default="wall", help="wmplan/configs/experiment/<name>: env and latent shape")
    p.add_argument("--override", nargs="*", default=[], help="extra train-config overrides, e.g. latent.pixel_size=8")
    p.add_argument("--episodes", type=int, nargs="+", default=[1, 50], help="episodes planned together per replan")
    p.add_argument("--horizon", type=int, default=5)
    p.add_argument("--precision", default="auto", help="auto | bf16 | fp32")
    p.add_argument("--max-seconds", type=float, default=60.0,
                   help="replans estimated longer than this are timed over one CEM iteration and scaled")
    p.add_argument("--quick", action="store_true", help="tiny model, 1 episode, cem only")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.quick:
        args.model, args.episodes = "tiny", [1]
    return args


def load_world_model(args: argparse.Namespace) -> WorldModel:
    if args.checkpoint:
        return WorldModel.from_checkpoint(args.checkpoint, precision=args.precision)
    overrides = [f"model={args.model}", f"experiment={args.experiment}", *args.override]
    return random_world_model(overrides, args.seed, args.precision)


def tokens_per_frame(wm: WorldModel) -> int:
    """Tokens one latent frame becomes: p x p patches plus the proprio token, if any."""
    m = wm.model.cfg
    h, w = m.latent_hw
    return (h // m.patch_size) * (w // m.patch_size) + int(m.proprio_dim > 0)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    wm = load_world_model(args)
    precision = wm.precision
    peak = matmul_peak(torch.bfloat16 if precision == "bf16" else torch.float32)
    auto = f"auto; bf16 matmul {bf16_speedup():.2f}x fp32" if args.precision == "auto" else "given"
    params = sum(p.numel() for p in wm.model.parameters())
    default_steps = plan_sampler(wm).steps
    print(f"machine: {cpu_name()} | torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"precision: {precision} ({auto}) | matmul peak {peak:.0f} GFLOP/s at {precision}")
    print(f"world model: {args.checkpoint or f'model={args.model} experiment={args.experiment} (random weights)'} | "
          f"{params / 1e6:.2f}M parameters | {tokens_per_frame(wm)} tokens/frame | window {wm.window} | "
          f"horizon {args.horizon}")
    steps = {"legacy": LEGACY_STEPS, "cached": LEGACY_STEPS, "default": default_steps, "recipe": default_steps}
    models = dict.fromkeys(PATHS, wm)  # path -> (world model, code path)
    if args.recipe_checkpoint:
        models["recipe"] = WorldModel.from_checkpoint(args.recipe_checkpoint, precision=args.precision)
        print(f"recipe: {args.recipe_checkpoint} | {tokens_per_frame(models['recipe'])} tokens/frame")
    code = {path: "default" if path == "recipe" else path for path in models}
    flops = {path: rollout_flops(models[path], code[path], steps[path], args.horizon) for path in models}
    print(f"paths: legacy = {LEGACY_STEPS} steps, no context cache, per-candidate noise, default allocator | "
          f"cached = {LEGACY_STEPS} steps, context cache, shared noise, tuned allocator | default = the same at "
          f"plan.yaml's {default_steps} step(s)")
    # The legacy path runs first, before the allocator is tuned: that is how it ran before.
    cells = [(label, cfg, episodes) for label, cfg in planner_settings(args.quick) for episodes in args.episodes]
    times: dict[tuple[str, int, str], tuple[float, int]] = {}
    for path in models:
        if path != "legacy":
            tune_cpu_allocator()
        for label, planner_cfg, episodes in cells:
            times[(label, episodes, path)] = time_replan(models[path], planner_cfg, episodes, args.horizon, code[path],
                                                         steps[path], args.max_seconds, args.seed)
    print(f"\n{'planner':<22} {'episodes':>8} {'path':>8} {'steps':>5} {'s/replan':>10} {'rollouts/s':>11} "
          f"{'GFLOP/s':>8} {'of peak':>8}")
    speedups: dict[tuple[str, int], dict[str, float]] = {}
    for label, planner_cfg, episodes in cells:
        full = planner_cfg["iterations"]
        for path in models:
            seconds, timed = times[(label, episodes, path)]
            note = "" if timed == full else f"  (1 iteration timed, x{full})"
            rollouts = episodes * planner_cfg["num_samples"] * full
            gflops = flops[path] * rollouts / seconds / 1e9
            print(f"{label:<22} {episodes:>8} {path:>8} {steps[path]:>5} {seconds:>10.2f} {rollouts / seconds:>11.0f} "
                  f"{gflops:>8.0f} {gflops / peak:>8.2f}{note}")
        speedups[(label, episodes)] = {p: times[(label, episodes, "legacy")][0] / times[(label, episodes, p)][0]
                                       for p in models if p != "legacy"}
    print()
    for (label, episodes), s in speedups.items():
        print(f"speedup over legacy, {label}, {episodes} episode(s): "
              + ", ".join(f"{p} {x:.1f}x" for p, x in s.items()))
    largest = max(args.episodes)
    print(f"speedup: {min(s['default'] for (_, e), s in speedups.items() if e == largest):.1f}x")


if __name__ == "__main__":
    main()
