"""One evaluation spread over many jobs: shards of the episodes, and the merge of their results.

    wmplan-plan -m episodes_shard=0/4,1/4,2/4,3/4 out_dir=outputs/plan/wall_50   # 4 jobs (any launcher)
    wmplan-plan-merge outputs/plan/wall_50                                       # -> results.json

Shard ``i/n`` (0 <= i < n) plans the i-th of n contiguous blocks of the episodes and writes
``results.shard-i-of-n.json``. Every episode draws its goals, planner noise and model noise
from the evaluation seed and its own index alone (``run_mpc``), so the merged records equal
those of one unsharded run, bit for bit; only the timings differ.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from wmplan.atomic import write_json_atomic
from wmplan.cli import reports_user_errors
from wmplan.planners.mpc import summarize, summary_line
from wmplan.report import write_evaluation_report

# Config keys that may differ between the shards of one evaluation: they change no result.
FREE_KEYS = ("episodes_shard", "out_dir", "progress", "videos", "video_format")
SHARD_FILE = re.compile(r"results\.shard-(\d+)-of-(\d+)\.json")


def parse_shard(shard: str | None) -> tuple[int, int] | None:
    """``"i/n"`` -> (i, n), 0 <= i < n; None -> None (the whole evaluation)."""
    if shard is None:
        return None
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(shard))
    if match is None or not int(match[1]) < int(match[2]):
        raise ValueError(f"episodes_shard must be 'i/n' with 0 <= i < n (e.g. 0/4), got {shard!r}")
    return int(match[1]), int(match[2])


def shard_episode_ids(episodes: int, shard: tuple[int, int] | None) -> list[int]:
    """The episode indices a shard plans: the i-th of n contiguous, near-equal blocks."""
    if shard is None:
        return list(range(episodes))
    index, count = shard
    if count > episodes:
        raise ValueError(f"episodes_shard {index}/{count}: {count} shards for {episodes} episodes leaves some empty")
    return [int(i) for i in np.array_split(np.arange(episodes), count)[index]]


def results_name(shard: tuple[int, int] | None) -> str:
    return "results.json" if shard is None else f"results.shard-{shard[0]}-of-{shard[1]}.json"


def merge_shards(out_dir: str | os.PathLike) -> dict[str, Any]:
    """Check that ``out_dir`` holds every shard of one evaluation and write their merged
    ``results.json`` (records in episode order, the summary recomputed from them, and each
    shard's timing and provenance under ``shards``) and ``report.html``."""
    out_dir = Path(out_dir)
    found = {}
    for path in sorted(out_dir.glob("results.shard-*-of-*.json")):
        match = SHARD_FILE.fullmatch(path.name)
        if match:
            found[int(match[1]), int(match[2])] = path
    if not found:
        raise FileNotFoundError(f"no results.shard-<i>-of-<n>.json in {out_dir}")
    counts = sorted({n for _, n in found})
    if len(counts) > 1:
        raise ValueError(f"{out_dir} mixes evaluations split into {counts} shards: keep one")
    count = counts[0]
    missing = [i for i in range(count) if (i, count) not in found]
    if missing:
        raise ValueError(f"{out_dir}: shards {missing} of {count} have no results yet")
    shards = [read_results(found[i, count]) for i in range(count)]
    first = shards[0]
    for i, shard in enumerate(shards[1:], start=1):
        check_same_evaluation(first, shard, found[0, count].name, found[i, count].name)
    records = sorted((r for s in shards for r in s["records"]), key=lambda r: r["episode"])
    episodes = first["config"]["episodes"]
    if [r["episode"] for r in records] != list(range(episodes)):
        raise ValueError(f"{out_dir}: the shards' episodes are not 0..{episodes - 1} once each")
    results = {
        **summarize(records),
        "config": {**first["config"], "episodes_shard": None, "out_dir": str(out_dir)},
        "checkpoint": first["checkpoint"],
        "provenance": first["provenance"],
        "shards": [{key: s[key] for key in ("episodes", "replans", "plan_time_mean_s", "plan_time_max_s", "provenance")}
                   for s in shards],
        "records": records,
    }
    # Each shard timed its own batch: report the mean and worst over shards.
    results["plan_time_mean_s"] = float(np.mean([s["plan_time_mean_s"] for s in shards]))
    results["plan_time_max_s"] = float(max(s["plan_time_max_s"] for s in shards))
    write_json_atomic(out_dir / "results.json", results, indent=2, sort_keys=False, default=str)
    if first["config"].get("report", True):
        write_evaluation_report(out_dir / "report.html", results, shard_videos(out_dir))
    return results


def shard_videos(out_dir: Path) -> dict[int, Path]:
    """{episode id: video} of the videos the shards wrote (``episode_<id>_<outcome>.<fmt>``)."""
    videos = {}
    for path in sorted((out_dir / "videos").glob("episode_*_*.*")):
        episode = path.name.split("_")[1]
        if episode.isdigit():
            videos[int(episode)] = path
    return videos


def read_results(path: Path) -> dict[str, Any]:
    try:
        results = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err})") from None
    if not {"config", "checkpoint", "provenance", "records"} <= results.keys():
        raise ValueError(f"{path} is not a wmplan-plan results file")
    return results


def check_same_evaluation(a: dict[str, Any], b: dict[str, Any], name_a: str, name_b: str) -> None:
    """Shards of one evaluation share every setting but where they ran, the same checkpoint
    file, and the precision the model actually ran at (``auto`` can resolve differently)."""
    config_a = {k: v for k, v in a["config"].items() if k not in FREE_KEYS}
    config_b = {k: v for k, v in b["config"].items() if k not in FREE_KEYS}
    differ = sorted(k for k in config_a.keys() | config_b.keys() if config_a.get(k) != config_b.get(k))
    if differ:
        raise ValueError(f"{name_b} was run with other settings than {name_a}: {', '.join(differ)}")
    if a["checkpoint"]["sha256"] != b["checkpoint"]["sha256"]:
        raise ValueError(f"{name_b} planned with another checkpoint file than {name_a}")
    precisions = [(s["provenance"] or {}).get("precision") for s in (a, b)]
    if precisions[0] != precisions[1]:
        raise ValueError(f"{name_b} ran at precision {precisions[1]}, {name_a} at {precisions[0]}")


@reports_user_errors("wmplan-plan-merge")
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="wmplan-plan-merge", description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", help="the folder the shards wrote their results.shard-<i>-of-<n>.json to")
    results = merge_shards(parser.parse_args(argv).out_dir)
    print(summary_line(results, label=f"{results['config']['env']['name']} ({len(results['shards'])} shards)"))


if __name__ == "__main__":
    main()
