"""Does distance in a model's latent space track distance in the environment? The planner's cost
is the latent distance to the goal, so a latent that folds (far states that encode close to the
goal) or saturates (every state beyond a few pixels equally far) cannot guide a plan from afar.

    python scripts/latent_landscape.py --world-model jepa:outputs/jepa/wall --dataset data/wall
    python scripts/latent_landscape.py --world-model outputs/train/wall/checkpoints/latest.ckpt --dataset data/wall

Encodes ``--frames`` random validation frames, draws ``--pairs`` random pairs, and prints the
Spearman correlation of latent MSE with the env's own distance (``env.evaluate``, the success
test's distance), the mean latent MSE per band of env distance, and how often a pair from the
farthest half lies closer in latent space than the median pair within the success radius band.

``--probe-frames N`` also asks whether the latent holds the state at all: a ridge regression
from the latent to each env state dimension, fitted on N training frames and scored on the
validation frames (RMSE next to the dimension's std, which a probe that knows nothing scores).
``--angle-dims`` are regressed as (cos, sin) and scored in degrees (PushT's block angle: 4).
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
    p.add_argument("--probe-frames", type=int, default=0, help="training frames for the state probe (0: no probe)")
    p.add_argument("--ridge", type=float, default=1.0, help="the probe's ridge penalty")
    p.add_argument("--angle-dims", type=int, nargs="*", default=[], help="state dimensions that are angles (radians)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def load_model(name: str) -> Any:
    from wmplan.jepa_world_model import PREFIX, JEPAWorldModel
    from wmplan.rollout import WorldModel

    if name.startswith(PREFIX):
        return JEPAWorldModel.from_folder(name, precision="fp32")
    return WorldModel.from_checkpoint(name, precision="fp32")


def encode_frames(wm: Any, dataset: str, split: str, frames: int, rng: np.random.Generator) -> tuple[dict, np.ndarray]:
    """The encoding of ``frames`` random frames of ``split`` (drawn with ``rng``) and their env states [N, S]."""
    data = ClipDataset(dataset, num_frames=1, frameskip=1, split=split)
    items = [data[int(i)] for i in rng.choice(len(data), size=min(frames, len(data)), replace=False)]
    pixels = np.stack([it["pixels"][0] for it in items])  # [N, H, W, 3]
    proprio = np.stack([it["proprio"][0] for it in items])  # [N, P]
    with torch.no_grad():
        parts = [wm.encode({"pixels": pixels[i:i + 256], "proprio": proprio[i:i + 256]}) for i in range(0, len(items), 256)]
    enc = {key: None if parts[0][key] is None else torch.cat([p[key] for p in parts]) for key in ("latents", "proprio")}
    return enc, np.stack([it["states"][0] for it in items])


def landscape(wm: Any, dataset: str, frames: int, pairs: int, seed: int) -> dict[str, np.ndarray]:
    """Env distance and latent (and proprio, where the model has it) MSE of random frame pairs."""
    rng = np.random.default_rng(seed)
    enc, states = encode_frames(wm, dataset, "val", frames, rng)
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


def state_probe(wm: Any, dataset: str, train_frames: int, val_frames: int, seed: int, ridge: float = 1.0,
                angle_dims: Sequence[int] = ()) -> dict[int, dict[str, float]]:
    """Per state dimension: held-out RMSE of a ridge probe from the latent, and the dimension's
    std; for ``angle_dims`` the median and 90th-percentile angle error in degrees instead."""
    rng = np.random.default_rng(seed)
    fit, fit_states = encode_frames(wm, dataset, "train", train_frames, rng)
    held, held_states = encode_frames(wm, dataset, "val", val_frames, rng)

    def features(enc: dict) -> np.ndarray:  # [N, D + 1]: the flattened latent and a bias
        z = enc["latents"].flatten(1).float().numpy()
        return np.c_[z, np.ones(len(z))]

    def targets(states: np.ndarray) -> np.ndarray:  # angles as (cos, sin), the rest as they are
        cols = [np.c_[np.cos(states[:, d]), np.sin(states[:, d])] if d in angle_dims else states[:, d:d + 1]
                for d in range(states.shape[1])]
        return np.concatenate(cols, axis=1)

    x, y = features(fit), targets(fit_states)
    weights = np.linalg.solve(x.T @ x + ridge * np.eye(x.shape[1]), x.T @ y)
    guess, truth = features(held) @ weights, targets(held_states)
    out, col = {}, 0
    for d in range(held_states.shape[1]):
        if d in angle_dims:
            error = np.angle(np.exp(1j * (np.arctan2(guess[:, col + 1], guess[:, col]) - held_states[:, d])))
            deg = np.degrees(np.abs(error))
            out[d] = {"median_deg": float(np.median(deg)), "p90_deg": float(np.quantile(deg, 0.9))}
            col += 2
        else:
            out[d] = {"rmse": float(np.sqrt(((guess[:, col] - truth[:, col]) ** 2).mean())), "std": float(truth[:, col].std())}
            col += 1
    return out


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    wm = load_model(args.world_model)
    report(landscape(wm, args.dataset, args.frames, args.pairs, args.seed), args.bands)
    if args.probe_frames:
        probe = state_probe(wm, args.dataset, args.probe_frames, args.frames, args.seed, args.ridge, args.angle_dims)
        print(f"state probe (ridge {args.ridge}, {args.probe_frames} training / {args.frames} validation frames):")
        for d, m in probe.items():
            print(f"  state[{d}]: " + (f"angle error median {m['median_deg']:.1f} deg, 90th pct {m['p90_deg']:.1f}"
                                       if "median_deg" in m else f"RMSE {m['rmse']:.3g} (std {m['std']:.3g})"))


if __name__ == "__main__":
    main()
