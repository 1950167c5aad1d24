"""scripts/plot_learning_curve.py: training episodes read from the world model, table and plot."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from wmplan.data.dataset import ClipDataset

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "plot_learning_curve.py"


@pytest.fixture(scope="module")
def curve():
    spec = importlib.util.spec_from_file_location("plot_learning_curve", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def jepa_folder(root: Path, dataset: Path, max_train_episodes: int | None) -> str:
    """A folder with the ``config.json`` fields wmplan-train-jepa writes about its data."""
    folder = root / f"jepa_{max_train_episodes}"
    folder.mkdir()
    train = {"val_fraction": 0.3, "split_seed": 0, "max_train_episodes": max_train_episodes}
    (folder / "config.json").write_text(json.dumps({"dataset": str(dataset), "train": train}))
    return f"jepa:{folder}"


def plan_run(root: Path, name: str, world_model: str, seed: int, success: float) -> Path:
    run = root / name
    run.mkdir()
    results = {"config": {"world_model": world_model, "seed": seed}, "episodes": 10, "success_rate": success,
               "success_ci95": [max(0.0, success - 0.2), min(1.0, success + 0.2)], "success_rate_any": success}
    (run / "results.json").write_text(json.dumps(results))
    return run


def test_episode_counts_match_the_training_split(curve, wall_data, checkpoint, tmp_path):
    for limit in (1, 3, None):
        clips = ClipDataset(wall_data, num_frames=2, frameskip=1, val_fraction=0.3, seed=0, max_train_episodes=limit)
        expected = (len(clips.episodes), int(clips.episodes.max()) + 1)
        assert curve.training_episodes(jepa_folder(tmp_path, wall_data, limit)) == expected
    # A NanoWM checkpoint (the conftest run: val_fraction 0.3, no limit) reads its own config.
    everything = ClipDataset(wall_data, num_frames=2, frameskip=1, val_fraction=0.3, seed=0)
    assert curve.training_episodes(str(checkpoint))[0] == len(everything.episodes) < 6


def test_table_and_plot(curve, wall_data, tmp_path, capsys):
    small, full = jepa_folder(tmp_path, wall_data, 1), jepa_folder(tmp_path, wall_data, None)
    runs = [plan_run(tmp_path, "full_s1", full, 1, 0.5), plan_run(tmp_path, "small_s1", small, 1, 0.1),
            plan_run(tmp_path, "small_s0", small, 0, 0.2)]
    out = tmp_path / "docs" / "curve.png"
    curve.main([*map(str, runs), "--out", str(out)])
    table = capsys.readouterr().out.splitlines()
    rows = [line for line in table if line.startswith("| ") and line[2].isdigit()]
    assert [row.split(" | ")[1:3] for row in rows] == [["0", "0.20 [0.00-0.40]"], ["1", "0.10 [0.00-0.30]"],
                                                       ["1", "0.50 [0.30-0.70]"]]
    assert rows[0].startswith("| 1 (of ")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_missing_inputs_are_named(curve, tmp_path):
    with pytest.raises(FileNotFoundError, match="no results.json"):
        curve.read_run(tmp_path)
    gone = jepa_folder(tmp_path, tmp_path / "deleted_dataset", None)
    with pytest.raises(FileNotFoundError, match="deleted_dataset"):
        curve.training_episodes(gone)
