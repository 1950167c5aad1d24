"""Try the bad inputs a user can give the command-line tools and print the error each gets,
as the markdown table in the README's "Bad input" section.

    .venv/bin/python scripts/bad_inputs.py [--workdir /tmp/wmplan-bad-inputs]

It collects a tiny Wall dataset and trains a tiny model (seconds), then runs each case as a
real command (``python -m wmplan...``) and reports the exit code and the last line of stderr.
A case whose output is a traceback, not a one-line error, is marked ``TRACEBACK``; for Hydra's
own config errors (an unknown config group option) the first line is shown.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

TINY_TRAIN = ["model=tiny", "latent=pixels", "latent.pixel_size=8", "env.resolution=16", "data.num_frames=3",
              "data.val_fraction=0.3", "training.batch_size=2", "training.accelerator=cpu", "validation.every_n_steps=2",
              "validation.num_clips=2", "validation.batch_size=2", "validation.num_batches=1",
              "validation.sampler.steps=2", "logging.progress_every=0"]
TINY_PLAN = ["env.resolution=16", "episodes=1", "budget_env_steps=10", "horizon=2", "videos=0", "progress=false",
             "planner.num_samples=4", "planner.topk=2", "planner.iterations=1"]
COMMANDS = {"wmplan-collect": "wmplan.data.collect", "wmplan-train": "wmplan.train", "wmplan-plan": "wmplan.planners.evaluate"}


def setup(work: Path) -> tuple[Path, Path]:
    """A tiny Wall dataset and a 2-step tiny checkpoint."""
    from hydra import compose, initialize_config_dir

    import wmplan.train
    from wmplan.config_dir import CONFIG_DIR
    from wmplan.data.collect import collect
    from wmplan.envs.config import load_env_config

    data = collect(load_env_config("wall", resolution=16, episode_length=20), 6, "random", 0, work / "data",
                   progress=False)
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", [*TINY_TRAIN, f"data.path={data}", f"out_dir={work / 'run'}", "training.max_steps=2"])
    return data, wmplan.train.train(cfg)


class RunsCode:
    def __reduce__(self):
        return open, ("/tmp/wmplan-bad-inputs-was-here", "w")


def bad_files(work: Path, data: Path, ckpt: Path) -> dict[str, Path]:
    files = {}
    files["truncated"] = work / "truncated.ckpt"
    files["truncated"].write_bytes(ckpt.read_bytes()[:4096])
    files["foreign"] = work / "foreign.ckpt"
    torch.save({"weights": torch.zeros(3)}, files["foreign"])
    state = torch.load(ckpt, weights_only=True)
    files["runs_code"] = work / "runs_code.ckpt"
    torch.save({**state, "extra": RunsCode()}, files["runs_code"])
    old = dict(state, rng_state={"torch": state["rng_state"]["torch"], "numpy": np.random.get_state()})
    files["old"] = work / "old.ckpt"
    torch.save(old, files["old"])
    files["corrupt_data"] = work / "corrupt_data"
    shutil.copytree(data, files["corrupt_data"])
    (files["corrupt_data"] / "wmplan.json").write_text("{not json")
    return files


def cases(work: Path, data: Path, ckpt: Path, f: dict[str, Path]) -> list[tuple[str, str, list[str]]]:
    train = [*TINY_TRAIN, f"data.path={data}", "training.max_steps=2"]
    plan = [*TINY_PLAN, f"world_model={ckpt}"]
    return [
        ("wrong-type override", "wmplan-train", [*train, "training.batch_size=abc", f"out_dir={work / 't1'}"]),
        ("missing dataset", "wmplan-train", [*TINY_TRAIN, "data.path=/nonexistent/data", f"out_dir={work / 't2'}"]),
        ("corrupt dataset", "wmplan-train", [*TINY_TRAIN, f"data.path={f['corrupt_data']}", f"out_dir={work / 't3'}"]),
        ("missing codec folder", "wmplan-train", [*train, "latent=trained_vae", "latent.path=/nonexistent/vae",
                                                  f"out_dir={work / 't4'}"]),
        ("missing checkpoint", "wmplan-plan", [*TINY_PLAN, "world_model=/nonexistent/latest.ckpt"]),
        ("truncated checkpoint", "wmplan-plan", [*TINY_PLAN, f"world_model={f['truncated']}"]),
        ("foreign torch file", "wmplan-plan", [*TINY_PLAN, f"world_model={f['foreign']}"]),
        ("checkpoint that runs code", "wmplan-plan", [*TINY_PLAN, f"world_model={f['runs_code']}"]),
        ("checkpoint from an older wmplan", "wmplan-plan", [*TINY_PLAN, f"world_model={f['old']}"]),
        ("unknown pretrained name", "wmplan-plan", [*TINY_PLAN, "world_model=pretrained:nope"]),
        ("env other than the model's", "wmplan-plan", [*plan, "env=pusht"]),
        ("resolution other than the model's", "wmplan-plan", [*plan, "env.resolution=32"]),
        ("history other than the model's", "wmplan-plan", [*plan, "history=3"]),
        ("sampler other than the model's", "wmplan-plan", [*plan, "+sampler.sampler=euler"]),
        ("unknown planner", "wmplan-plan", [*plan, "planner=nope"]),
        ("no episodes", "wmplan-plan", [*plan, "episodes=0"]),
        ("unknown data policy", "wmplan-collect", ["env=wall", "episodes=2", "policy=nope", f"out_dir={work / 'c1'}"]),
        ("negative episode count", "wmplan-collect", ["env=wall", "episodes=-1", f"out_dir={work / 'c2'}"]),
    ]


def run_case(command: str, overrides: list[str]) -> tuple[int, str, bool]:
    """(exit code, last stderr line, whether the output is a traceback)."""
    proc = subprocess.run([sys.executable, "-m", COMMANDS[command], *overrides], capture_output=True, text=True,
                          timeout=600)
    lines = [line for line in proc.stderr.splitlines() if line.strip() and "HYDRA_FULL_ERROR" not in line]
    if "HYDRA_FULL_ERROR" in proc.stderr and "Traceback" not in proc.stderr:
        lines = lines[:1]  # Hydra's own config error: its first line names the problem
    last = lines[-1] if lines else proc.stdout.strip().splitlines()[-1]
    return proc.returncode, last, "Traceback" in proc.stderr


def api_cases(ckpt: Path) -> list[tuple[str, str]]:
    """Bad actions given to ``WorldModel.rollout`` from Python: the ValueError each gets."""
    from wmplan.rollout import WorldModel

    wm = WorldModel.from_checkpoint(ckpt)
    obs = {"pixels": np.zeros((1, 16, 16, 3), np.uint8), "proprio": np.zeros((1, 4), np.float32)}
    context = wm.encode(obs)
    good = torch.zeros(1, 2, 2, wm.action_dim)
    out = []
    for name, actions in (("NaN actions", good.clone().fill_(float("nan"))), ("inf actions", good.clone().fill_(float("inf"))),
                          ("wrong-shape actions", torch.zeros(1, 2, 2, wm.action_dim + 1))):
        try:
            wm.rollout(context, actions)
            out.append((name, "no error"))
        except ValueError as err:
            out.append((name, f"ValueError: {err}"))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/wmplan-bad-inputs")
    args = parser.parse_args()
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    data, ckpt = setup(work)
    files = bad_files(work, data, ckpt)
    print("| bad input | command | exit | error |")
    print("|---|---|---|---|")
    for name, command, overrides in cases(work, data, ckpt, files):
        code, last, traceback = run_case(command, overrides)
        mark = " **TRACEBACK**" if traceback else ""
        print(f"| {name} | `{command}` | {code} | {last.replace('|', '/')}{mark} |", flush=True)
    for name, error in api_cases(ckpt):
        print(f"| {name} | `WorldModel.rollout` | - | {error} |")
    print(f"code was run by the malicious checkpoint: {Path('/tmp/wmplan-bad-inputs-was-here').exists()}")


if __name__ == "__main__":
    main()
