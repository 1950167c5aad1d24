"""`make demo` end to end with tiny budgets (scripts/demo.py --quick)."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_demo_quick_writes_every_output(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "demo.py"), "--quick", "--out", str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert (tmp_path / "env_gallery.png").stat().st_size > 1000
    for name in ("pusht", "pointmaze_umaze", "wall", "rope", "granular"):
        assert (tmp_path / "gifs" / f"{name}.gif").stat().st_size > 100
    for label in ("world_model", "random", "oracle"):
        results = json.loads((tmp_path / "wall" / "plan" / label / "results.json").read_text())
        assert results["episodes"] == 2 and 0.0 <= results["success_rate"] <= 1.0
    assert "world model" in run.stdout and "oracle" in run.stdout
