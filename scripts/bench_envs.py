"""Environment throughput: env steps per second, with rendering, for every wmplan env.

Measures one env, a ``gymnasium.vector.SyncVectorEnv`` and an ``AsyncVectorEnv`` (2
workers each) at 64 and 224 px, and prints a table. Single-env numbers are on one core
(the script pins BLAS/OpenMP to one thread). An env that fails is reported, not fatal.

    python scripts/bench_envs.py [--envs wmplan/PushT-v0 wmplan/Wall-v0] [--steps 1000]
                                 [--modes single] [--resolutions 64]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before numpy is imported
from wmplan.envs.gl import configure_mujoco_gl  # noqa: E402

configure_mujoco_gl()

import argparse  # noqa: E402
import time  # noqa: E402

import gymnasium as gym  # noqa: E402

import wmplan.envs  # noqa: E402

WORKERS = 2
MODES = ["single", "sync", "async"]
WARMUP_STEPS = 5


def steps_per_second(env: gym.Env, steps: int, max_seconds: float, n_envs: int = 1) -> float:
    """Env steps per second over ``steps`` env steps (or ``max_seconds``) of seeded random actions."""
    env.reset(seed=0)
    env.action_space.seed(0)
    for _ in range(WARMUP_STEPS):
        env.step(env.action_space.sample())
    calls, start = 0, time.perf_counter()
    while calls * n_envs < steps and time.perf_counter() - start < max_seconds:
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        if n_envs == 1 and (terminated or truncated):  # vector envs reset themselves
            env.reset()
        calls += 1
    return calls * n_envs / (time.perf_counter() - start)


def measure(env_id: str, resolution: int, mode: str, steps: int, max_seconds: float) -> float | str:
    """Steps/s, or the error (a string) that stopped the measurement."""
    make = lambda: wmplan.envs.make(env_id, resolution=resolution)  # noqa: E731
    try:
        if mode == "single":
            env, n_envs = make(), 1
        elif mode == "sync":
            env, n_envs = gym.vector.SyncVectorEnv([make] * WORKERS), WORKERS
        else:  # spawn: forked workers can hang in EGL once this process has rendered
            env, n_envs = gym.vector.AsyncVectorEnv([make] * WORKERS, context="spawn"), WORKERS
        try:
            return steps_per_second(env, steps, max_seconds, n_envs)
        finally:
            env.close()
    except Exception as error:  # report and carry on with the other envs
        return f"{type(error).__name__}: {error}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--envs", nargs="+", default=sorted(wmplan.envs.ENV_IDS), help="env ids")
    parser.add_argument("--steps", type=int, default=1000, help="env steps timed per cell")
    parser.add_argument("--max-seconds", type=float, default=10.0, help="time cap per cell")
    parser.add_argument("--resolutions", type=int, nargs="+", default=[64, 224])
    parser.add_argument("--modes", nargs="+", choices=MODES, default=MODES, help="env setups to time")
    args = parser.parse_args()
    if args.steps < 1 or args.max_seconds <= 0:
        parser.error(f"--steps and --max-seconds must be positive, got {args.steps}, {args.max_seconds}")

    header = f"{'env':<28} {'px':>4} " + " ".join(f"{m + ' steps/s':>16}" for m in args.modes)
    print(header, flush=True)
    print("-" * len(header), flush=True)
    for env_id in args.envs:
        for resolution in args.resolutions:
            results = [measure(env_id, resolution, mode, args.steps, args.max_seconds) for mode in args.modes]
            cells = [f"{r:,.0f}" if isinstance(r, float) else "error" for r in results]
            print(f"{env_id:<28} {resolution:>4} " + " ".join(f"{c:>16}" for c in cells), flush=True)
            for error in dict.fromkeys(r for r in results if isinstance(r, str)):
                print(f"    {error}", flush=True)


if __name__ == "__main__":
    main()
