"""Planning success against the number of training episodes: a learning curve from finished
``wmplan-plan`` runs, next to DINO-WM's published PushT curve.

    python scripts/plot_learning_curve.py outputs/plan/pusht_200 outputs/plan/pusht_1000 \
        outputs/plan/pusht_5000 --out docs/pusht_learning_curve.png

Each argument is a ``wmplan-plan`` output folder (or its ``results.json``). The number of training
episodes is not given on the command line: it is read from the world model the run planned with
(a ``jepa:<folder>``'s ``config.json`` or a NanoWM checkpoint's config: the dataset, its split
and ``max_train_episodes``), so the x axis cannot disagree with what the model saw. Runs with
different goal sets (``seed``) are drawn as separate series. Prints a markdown table
(episodes, success with its 95% interval, success at any step) and writes the plot.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from wmplan.data.dataset import load_dataset_info, split_episodes
from wmplan.report import save_plot

# DINO-WM (Zhou et al. 2024), PushT success by number of training episodes (its data-scaling table).
DINO_WM_PUSHT = {200: 0.08, 1000: 0.48, 18500: 0.92}


def read_run(path: str | Path) -> dict[str, Any]:
    """The ``results.json`` of a plan run, given its folder or the file itself."""
    path = Path(path)
    file = path / "results.json" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"no results.json at {path}: pass a finished wmplan-plan output folder")
    return json.loads(file.read_text())


def training_split(world_model: str) -> dict[str, Any]:
    """Dataset, ``val_fraction``, ``split_seed`` and ``max_train_episodes`` a world model trained with."""
    if world_model.startswith("jepa:"):
        config = json.loads((Path(world_model.removeprefix("jepa:")) / "config.json").read_text())
        train = config["train"]
        return {"dataset": config["dataset"], "val_fraction": train["val_fraction"], "split_seed": train["split_seed"],
                "max_train_episodes": train.get("max_train_episodes")}
    from wmplan.checkpoint import read_checkpoint

    data = read_checkpoint(world_model, mmap=True)["wmplan_config"]["data"]
    return {"dataset": data["path"], "val_fraction": data["val_fraction"], "split_seed": data["split_seed"],
            "max_train_episodes": data["max_train_episodes"]}


def training_episodes(world_model: str) -> tuple[int, int]:
    """(episodes the world model trained on, episodes of the collection they span), recomputed
    from its dataset's split: the first ``max_train_episodes`` train episodes of a collection."""
    split = training_split(world_model)
    if not Path(split["dataset"]).is_dir():
        raise FileNotFoundError(f"{world_model} trained on {split['dataset']}, which is not here: the episode "
                                "count is read from that dataset's split")
    n = load_dataset_info(split["dataset"])["num_episodes"]
    train = np.flatnonzero(~split_episodes(n, split["val_fraction"], split["split_seed"]))
    train = train[: split["max_train_episodes"]]
    return len(train), int(train[-1]) + 1


def curve_rows(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per run: goal seed, training and collected episodes, success, its interval, success
    at any step."""
    rows = []
    for run in runs:
        episodes, collected = training_episodes(str(run["config"]["world_model"]))
        rows.append({"seed": run["config"]["seed"], "episodes": episodes, "collected": collected,
                     "success": run["success_rate"], "ci95": run["success_ci95"], "any_step": run["success_rate_any"]})
    return sorted(rows, key=lambda row: (row["seed"], row["episodes"]))


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    lines = ["| training episodes (of collected) | goals (seed) | success [95% CI] | any step |", "|---|---|---|---|"]
    for row in rows:
        lo, hi = row["ci95"]
        lines.append(f"| {row['episodes']:,} (of {row['collected']:,}) | {row['seed']} "
                     f"| {row['success']:.2f} [{lo:.2f}-{hi:.2f}] | {row['any_step']:.2f} |")
    dino = ", ".join(f"{s:.2f} at {n:,}" for n, s in DINO_WM_PUSHT.items())
    return "\n".join([*lines, "", f"DINO-WM (paper): {dino} episodes."])


def draw_curve(rows: Sequence[dict[str, Any]], title: str):
    """A ``save_plot`` drawer: success with 95% intervals per goal set, DINO-WM's curve dashed."""
    series: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        series[row["seed"]].append(row)

    def draw(ax):
        for i, (seed, points) in enumerate(sorted(series.items())):
            x = np.array([p["episodes"] for p in points]) * (1 + 0.04 * i)  # offset so intervals do not overlap
            y = np.array([p["success"] for p in points])
            err = np.abs(np.array([p["ci95"] for p in points]).T - y)
            ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=f"wmplan, goals seed {seed}")
        ax.plot(list(DINO_WM_PUSHT), list(DINO_WM_PUSHT.values()), "k--", marker="s", label="DINO-WM (paper)")
        ax.set(xscale="log", xlabel="training episodes", ylabel="success rate", ylim=(0, 1), title=title)
        ax.legend(fontsize=8)

    return draw


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="wmplan-plan output folders (or their results.json)")
    p.add_argument("--out", type=Path, required=True, help="the PNG to write")
    p.add_argument("--title", default="PushT: success by training data")
    args = p.parse_args(argv)
    rows = curve_rows([read_run(path) for path in args.runs])
    print(markdown_table(rows))
    save_plot(args.out, draw_curve(rows, args.title))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
