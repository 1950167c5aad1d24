"""A labelled PNG grid of every wmplan env: a few observations of an episode and its goal.

One row per env: the frames at env steps 0, k, 2k, ... from a start drawn by
``sample_start_and_goal`` (PushT driven by the scripted pusher, the others by random
actions), then the goal image of the same draw.

    python scripts/env_gallery.py [--out outputs/demo/env_gallery.png] [--envs ...]
"""

from __future__ import annotations

from wmplan.envs.gl import configure_mujoco_gl  # noqa: E402

configure_mujoco_gl()

import argparse  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

import wmplan.envs  # noqa: E402
from wmplan.atomic import atomic_path  # noqa: E402
from wmplan.envs.base import GoalEnv  # noqa: E402
from wmplan.envs.pusht import Pusher  # noqa: E402

LABEL_WIDTH, HEADER_HEIGHT, GAP = 190, 18, 4
TEXT, PAPER = (20, 20, 20), (255, 255, 255)


def episode_policy(env_id: str, env: GoalEnv, rng: np.random.Generator) -> Callable[[np.ndarray], np.ndarray]:
    """Action source for the gallery episode: the pusher for PushT, else random actions."""
    if env_id == "wmplan/PushT-v0":
        return Pusher(rng)
    return lambda state: rng.uniform(env.action_space.low, env.action_space.high).astype(np.float32)


def env_row(env_id: str, frames: int, every: int, resolution: int, seed: int) -> list[np.ndarray]:
    """Images uint8 [H, W, 3]: ``frames`` observations ``every`` env steps apart, then the goal."""
    env: GoalEnv = wmplan.envs.make(env_id, resolution=resolution).unwrapped
    rng = np.random.default_rng(seed)
    start, goal = env.sample_start_and_goal(rng)
    obs, info = env.reset(seed=seed, options={"state": start})
    policy = episode_policy(env_id, env, rng)
    images = [obs["pixels"]]
    while len(images) < frames:
        for _ in range(every):
            obs, _, _, _, info = env.step(policy(info["state"]))
        images.append(obs["pixels"])
    images.append(env.render_state(goal))
    env.close()
    return images


def compose(rows: dict[str, list[np.ndarray]], column_labels: list[str], scale: int) -> Image.Image:
    """Grid with a label column on the left and a header row of column labels."""
    side = max(img.shape[0] for images in rows.values() for img in images) * scale
    width = LABEL_WIDTH + len(column_labels) * (side + GAP)
    height = HEADER_HEIGHT + len(rows) * (side + GAP)
    canvas = Image.new("RGB", (width, height), PAPER)
    draw = ImageDraw.Draw(canvas)
    for j, label in enumerate(column_labels):
        draw.text((LABEL_WIDTH + j * (side + GAP) + 2, 3), label, fill=TEXT)
    for i, (name, images) in enumerate(rows.items()):
        top = HEADER_HEIGHT + i * (side + GAP)
        draw.text((4, top + side // 2 - 6), name, fill=TEXT)
        for j, img in enumerate(images):
            tile = Image.fromarray(img).resize((side, side), Image.NEAREST)
            canvas.paste(tile, (LABEL_WIDTH + j * (side + GAP), top))
    return canvas


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/demo/env_gallery.png"))
    parser.add_argument("--envs", nargs="+", default=list(wmplan.envs.ENV_IDS), help="env ids")
    parser.add_argument("--frames", type=int, default=5, help="observations per row")
    parser.add_argument("--every", type=int, default=5, help="env steps between observations")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--scale", type=int, default=2, help="nearest-neighbour upscaling")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for name in ("frames", "every", "scale"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")

    rows = {}
    for env_id in args.envs:
        try:
            rows[env_id] = env_row(env_id, args.frames, args.every, args.resolution, args.seed)
        except Exception as error:  # a broken env must not hide the others
            print(f"skipped {env_id}: {type(error).__name__}: {error}")
    if not rows:
        raise SystemExit("no env could be rendered")
    labels = [f"step {i * args.every}" for i in range(args.frames)] + ["goal"]
    with atomic_path(args.out) as tmp:
        compose(rows, labels, args.scale).save(tmp, format="PNG")
    print(f"wrote {args.out} ({len(rows)} envs)")


if __name__ == "__main__":
    main()
