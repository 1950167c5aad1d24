"""Two evaluations on the same episodes, compared episode by episode (a paired bootstrap).

    wmplan-compare outputs/plan/granular_a outputs/plan/granular_b

Every episode's start and goal come from the evaluation seed alone, so two ``wmplan-plan``
runs with the same env, seed and episode count plan the same episodes. Pairing them removes
the spread between episodes (some layouts are simply harder), which is most of the spread:
a difference far smaller than either run's own confidence interval can still be certain.
The comparison refuses runs whose episodes differ.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import bootstrap

from wmplan.cli import reports_user_errors
from wmplan.planners.shards import read_results

METRICS = ("final_distance", "min_distance", "success", "success_any")


def load_results(path: str | Path) -> dict[str, Any]:
    """The results of ``wmplan-plan``: a ``results.json`` file or the folder that holds one."""
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    if not path.is_file():
        raise FileNotFoundError(f"no wmplan-plan results at {path}")
    return read_results(path)


def check_same_episodes(a: dict[str, Any], b: dict[str, Any]) -> None:
    """Refuse two evaluations unless they planned the same episodes (env, starts and goals)."""
    for name, results in (("first", a), ("second", b)):
        for record in results["records"]:
            missing = {"episode", "start_state", "goal_state"} - record.keys()
            if missing:
                raise ValueError(f"the {name} run's records lack {', '.join(sorted(missing))}: "
                                 "written by an older wmplan-plan?")
    envs = [r["config"]["env"]["id"] for r in (a, b)]
    if envs[0] != envs[1]:
        raise ValueError(f"the runs planned different environments: {envs[0]} and {envs[1]}")
    ids = [[rec["episode"] for rec in r["records"]] for r in (a, b)]
    if min(len(ids[0]), len(ids[1])) < 2:
        raise ValueError(f"a paired comparison needs 2 or more episodes per run, got {len(ids[0])} and {len(ids[1])}")
    if ids[0] != ids[1]:
        raise ValueError(f"the runs planned different episodes: {len(ids[0])} and {len(ids[1])} "
                         f"(first ids {ids[0][:3]} and {ids[1][:3]}); compare runs with the same `episodes`")
    for ra, rb in zip(a["records"], b["records"]):
        for key in ("start_state", "goal_state"):
            if ra[key] != rb[key]:
                seeds = a["config"].get("seed"), b["config"].get("seed")
                raise ValueError(f"episode {ra['episode']} has another {key} in each run (seeds {seeds[0]} and "
                                 f"{seeds[1]}): they planned different episodes, so they cannot be paired")


def paired_difference(a: dict[str, Any], b: dict[str, Any], metric: str = "final_distance",
                      resamples: int = 10000, seed: int = 0) -> dict[str, Any]:
    """B - A per episode of ``metric``: its mean, a 95% percentile-bootstrap interval over
    episodes (``resamples`` draws from ``seed``), and how many episodes B is below, above, level."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    if resamples < 100:
        raise ValueError(f"resamples must be >= 100 for a 95% interval, got {resamples}")
    check_same_episodes(a, b)
    value_a, value_b = (np.array([float(rec[metric]) for rec in r["records"]]) for r in (a, b))  # [N]
    diff = value_b - value_a  # [N]
    interval = bootstrap((diff,), np.mean, n_resamples=resamples, batch=1000, method="percentile",
                         random_state=np.random.default_rng(seed)).confidence_interval
    return {
        "metric": metric,
        "episodes": len(diff),
        "mean_a": float(value_a.mean()),
        "mean_b": float(value_b.mean()),
        "difference": float(diff.mean()),
        "ci95": [float(interval.low), float(interval.high)],
        "b_lower": int((diff < 0).sum()),
        "b_higher": int((diff > 0).sum()),
        "level": int((diff == 0).sum()),
    }


def comparison_line(result: dict[str, Any], name_a: str = "A", name_b: str = "B") -> str:
    low, high = result["ci95"]
    return (f"{result['metric']} over {result['episodes']} paired episodes: {name_a} {result['mean_a']:.4g}, "
            f"{name_b} {result['mean_b']:.4g}; {name_b} - {name_a} {result['difference']:+.4g} "
            f"[95% CI {low:+.4g}, {high:+.4g}]; {name_b} lower in {result['b_lower']}, "
            f"higher in {result['b_higher']}, level in {result['level']}")


@reports_user_errors("wmplan-compare")
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="wmplan-compare", description=__doc__.splitlines()[0])
    parser.add_argument("a", help="the first run: a wmplan-plan out_dir or its results.json")
    parser.add_argument("b", help="the second run, on the same episodes (same env, seed and episodes)")
    parser.add_argument("--metric", default="final_distance", choices=METRICS)
    parser.add_argument("--resamples", type=int, default=10000, help="bootstrap draws (default 10000)")
    parser.add_argument("--seed", type=int, default=0, help="the bootstrap's seed (default 0)")
    parser.add_argument("--json", action="store_true", help="print the comparison as JSON")
    args = parser.parse_args(argv)
    result = paired_difference(load_results(args.a), load_results(args.b), args.metric, args.resamples, args.seed)
    print(json.dumps(result) if args.json else comparison_line(result, args.a, args.b))


if __name__ == "__main__":
    main()
