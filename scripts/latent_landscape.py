"""Does distance in a model's latent space track distance in the environment? The planner's cost
is the latent distance to the goal, so a latent that folds (far states that encode close to the
goal) or saturates (every state beyond a few pixels equally far) cannot guide a plan from afar.

    python scripts/latent_landscape.py --world-model jepa:outputs/jepa/wall --dataset data/wall
    python scripts/latent_landscape.py --world-model outputs/train/wall/checkpoints/latest.ckpt --dataset data/wall

Encodes ``--frames`` random validation frames, draws ``--pairs`` random pairs, and prints the
Spearman correlation of latent MSE with the env's own distance (``env.evaluate``, the success
test's distance), the mean latent MSE per band of env distance, and how often a pair from the
farthest half lies closer in latent space than the median pair within the success radius band.
"""

from __future__ import annotations

import argparse
from typing import Any, Sequence

import gymnasium as gym
import numpy as np
import torch
from scipy.stats import spearmanr

import wmplan.envs  # noqa: F401  (registers the envs)
from wmplan.data.dataset import ClipDataset


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--world-model", required=True, help="a NanoWM checkpoint, or jepa:<folder>")
    p.add_argument("--dataset", required=True, help="a dataset folder of the model's env")
    p.add_argument("--frames", type=int, default=512, help="random validation frames to encode")
    p.add_argument("--pairs", type=int, default=20000, help="random pairs of those frames")
    p.add_argument("--bands", type=int, default=6, help="env-distance bands (quantiles) in the table")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def load_model(name: str) -> Any:
    from wmplan.jepa_world_model import PREFIX, JEPAWorldModel
    from wmplan.rollout import WorldModel

    if name.startswith(PREFIX):
        return JEPAWorldModel.from_folder(name, precision="fp32")
    return WorldModel.from_checkpoint(name, precision="fp32")


def landscape(wm: Any, dataset: str, frames: int, pairs: int, seed: int) -> dict[str, np.ndarray]:
    """Env distance and latent (and proprio, where the model has it) MSE of random frame pairs."""
    data = ClipDataset(dataset, num_frames=1, frameskip=1, split="val")
    rng = np.random.default_rng(seed)
    items = [data[int(i)] for i in rng.choice(len(data), size=min(frames, len(data)), replace=False)]
    pixels = np.stack([it["pixels"][0] for it in items])  # [N, H, W, 3]
    states = np.stack([it["states"][0] for it in items])  # [N, S]
    with torch.no_grad():
        enc = wm.encode({"pixels": pixels, "proprio": np.stack([it["proprio"][0] for it in items])})
    z = enc["latents"].flatten(1).float().numpy()  # [N, D]
    i, j = rng.integers(len(z), size=(2, pairs))
    keep = i != j
    i, j = i[keep], j[keep]
    env = gym.make(wm.env_id).unwrapped
    env.reset(seed=seed)
    out = {"env": np.array([env.evaluate(states[a], states[b])["distance"] for a, b in zip(i, j)]),
           "latent": ((z[i] - z[j]) ** 2).mean(1)}
    if enc.get("proprio") is not None:
        p = enc["proprio"].float().numpy()
        out["proprio"] = ((p[i] - p[j]) ** 2).mean(1)
    return out


def report(pairs: dict[str, np.ndarray], bands: int) -> None:
    d = pairs["env"]
    edges = np.quantile(d, np.linspace(0, 1, bands + 1))
    for key in [k for k in pairs if k != "env"]:
        m = pairs[key]
        near = m[d <= edges[1]]
        far = m[d >= np.median(d)]
        print(f"{key}: Spearman with env distance {spearmanr(d, m)[0]:.3f}; "
              f"far pairs closer than the nearest band's median: {(far < np.median(near)).mean():.3f}")
        print("  env distance band | latent MSE mean | 10th pct | 90th pct | pairs")
        for lo, hi in zip(edges[:-1], edges[1:]):
            band = m[(d >= lo) & (d <= hi)]
            print(f"  {lo:7.2f} - {hi:7.2f} | {band.mean():.4f} | {np.quantile(band, 0.1):.4f} | "
                  f"{np.quantile(band, 0.9):.4f} | {len(band)}")


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    wm = load_model(args.world_model)
    report(landscape(wm, args.dataset, args.frames, args.pairs, args.seed), args.bands)


if __name__ == "__main__":
    main()
