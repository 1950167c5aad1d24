"""Distributed training and the W&B logger, run rather than assumed.

DDP: two CPU processes on the gloo backend, launched the way a user launches them, through the
Hydra CLI (``wmplan.train.main`` with ``training.strategy=ddp training.devices=2
training.accelerator=cpu``). Lightning's ``ddp`` strategy starts rank 1 by re-running rank 0's
command line, so each run is a subprocess of ``tests/distributed_train.py`` (``wmplan-train``
plus a recorder of what each rank trained on; see its docstring). One run uses ``ddp_fork``,
Lightning's other way to start ranks (forked from a trainer built as rank 0). The references
are in-process single-process runs of the same config.

What is shown:
* every rank draws rank 0's data and noise -> the DDP weights equal a single-process run's;
* normal DDP training: the ranks train on different batches (under both launchers), yet end
  with bitwise identical weights, equal to those of one process that averages the two ranks'
  losses each step (the gradient all-reduce), and far from a single-process run on rank 0's
  data, which is what rank 0 would end with if nothing were all-reduced (so the check can fail);
* only rank 0 writes checkpoints: one ``latest.ckpt`` plus the snapshots, no temp files;
* a DDP run extended to a larger ``max_steps`` resumes at the saved step, on both ranks, with
  each rank's batch stream continuing where it stopped.

W&B: ``logging.wandb=true logging.wandb_offline=true`` with no network writes its offline run
under ``out_dir``.

All runs use fp32 (the bf16 choice of ``precision=auto`` is timed per process) and a constant
LR after warmup (``min_lr_ratio=1``) so that a run extended from 2 to 4 steps has the LR history
of a 4-step run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import TRAIN_OVERRIDES, train_config
from distributed_train import RECORD_ENV, SAME_DATA_ENV, AsRank

import wmplan.train
from wmplan.models.codecs import CodecConfig, build_codec
from wmplan.module import WorldModelModule
from wmplan.train import StepBatches

SCRIPT = Path(__file__).resolve().parent / "distributed_train.py"
WORLD = 2
STEPS = 4
COMMON = ("training.precision=fp32", "training.min_lr_ratio=1.0", "checkpoint.snapshot_every_n_steps=2")
DEVICES = f"training.devices={WORLD}"  # TRAIN_OVERRIDES has training.accelerator=cpu
# DDP ranks run one thread each (Lightning's default for 2 processes on 2 cores), the reference
# runs in-process: reductions may round differently. Measured: 5e-12 (same data) and 1e-9
# (averaged losses) against 7e-4 for what rank 1's data adds (rank 0's weights without it).
ATOL = 1e-6
TIMEOUT_S = 300
# Variables that would make Lightning believe it runs under an external launcher / cluster.
LAUNCHER_VARS = ("LOCAL_RANK", "RANK", "WORLD_SIZE", "NODE_RANK", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT",
                 "PL_GLOBAL_SEED", "TORCHELASTIC_RUN_ID")
WANDB_PREFIX = "WANDB_"  # W&B settings reach a run only where a test sets them


def load(path):
    return torch.load(path, map_location="cpu", weights_only=False)


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in LAUNCHER_VARS and not k.startswith(("SLURM_", "LSB_", "OMPI_", "PMI_", WANDB_PREFIX))}
    env.update(PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", **extra)
    return env


def run_cli(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    """Run ``python <args>`` (and any processes it starts) to completion; its output."""
    cwd.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([sys.executable, *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # rank 0 and the rank it launched share the session
        out, _ = proc.communicate()
        pytest.fail(f"{args[0]} timed out after {TIMEOUT_S} s:\n{out[-6000:]}")
    assert proc.returncode == 0, f"{args[0]} exited with {proc.returncode}:\n{out[-6000:]}"
    return out


def ddp_train(data: Path, out_dir: Path, max_steps: int, record: Path, same_data: bool = False,
              strategy: str = "ddp") -> list[dict]:
    """A 2-process DDP run through the Hydra CLI; each rank's record, rank 0 first."""
    overrides = [*TRAIN_OVERRIDES, *COMMON, f"training.strategy={strategy}", DEVICES,
                 f"data.path={data}", f"out_dir={out_dir}", f"training.max_steps={max_steps}"]
    env = clean_env(**{RECORD_ENV: str(record), **({SAME_DATA_ENV: "1"} if same_data else {})})
    run_cli([str(SCRIPT), *overrides], cwd=out_dir.parent, env=env)
    records = [load(record / f"rank{r}.pt") for r in range(WORLD)]
    for rank, rec in enumerate(records):
        assert (rec["rank"], rec["world_size"], rec["strategy"], rec["backend"]) == (rank, WORLD, "DDPStrategy", "gloo")
    return records


def single_train(data: Path, out_dir: Path, *extra: str) -> dict:
    """The in-process, single-process reference run (``STEPS`` steps); its checkpoint."""
    return load(wmplan.train.train(train_config(data, out_dir, STEPS, *COMMON, *extra)))


def max_diff(a: dict, b: dict) -> float:
    """Largest absolute difference over the float tensors of two state dicts."""
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].is_floating_point())


def assert_same_state(a: dict, b: dict, atol: float = ATOL) -> None:
    assert a.keys() == b.keys()
    assert any(k.startswith("ema.") for k in a) and any(k.startswith("model.") for k in a)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=atol, msg=key)


def expected_batches(cfg, rank: int, start: int, steps: int) -> dict[int, list[list[int]]]:
    """(episode, start) of the clips rank ``rank`` draws at steps start..start+steps-1."""
    train_set, _ = wmplan.train.build_datasets(cfg, build_codec(CodecConfig(**cfg.latent)))
    t = cfg.training
    stream = iter(StepBatches(train_set, t.batch_size, t.seed, start=start, rank=rank))
    out = {}
    for step in range(start, start + steps):
        batch = next(stream)
        out[step] = torch.stack([batch["episode"], batch["start"]], dim=1).tolist()
    return out


class BothRanksBatches(StepBatches):
    """Each step, the batches of every rank of a 2-process run, as one tuple."""

    def __iter__(self):
        streams = [iter(StepBatches(self.dataset, self.batch_size, self.seed, self.start, rank))
                   for rank in range(WORLD)]
        return zip(*streams)


def mean_over_ranks(monkeypatch) -> None:
    """Make a single process train, each step, on the mean of the losses that ranks 0 and 1
    of a 2-process run compute (their batches, their noise): DDP's averaged gradient."""
    training_step, step_generator = WorldModelModule.training_step, WorldModelModule._step_generator

    def step(self, batches, batch_idx):
        losses = []
        for rank, batch in enumerate(batches):
            self._as_rank = rank
            losses.append(training_step(self, batch, batch_idx))
        return torch.stack(losses).mean()

    monkeypatch.setattr(wmplan.train, "StepBatches", BothRanksBatches)
    monkeypatch.setattr(WorldModelModule, "training_step", step)
    monkeypatch.setattr(WorldModelModule, "_step_generator",
                        lambda self, device, batch_idx=0: step_generator(AsRank(self, self._as_rank), device, batch_idx))


@pytest.fixture(scope="module")
def single_run(wall_data, tmp_path_factory) -> dict:
    """Single process, rank 0's data: the checkpoint after ``STEPS`` steps."""
    return single_train(wall_data, tmp_path_factory.mktemp("single") / "run")


@pytest.fixture(scope="module")
def ddp_resumed(wall_data, tmp_path_factory) -> SimpleNamespace:
    """A DDP run to step 2 (checkpoints every 2), then the same run extended to ``STEPS``.

    The first part forks its ranks (``ddp_fork``), the second re-runs the command line (``ddp``).
    """
    root = tmp_path_factory.mktemp("ddp")
    out, ckpts = root / "run", root / "run" / "checkpoints"
    first = ddp_train(wall_data, out, 2, root / "record-first", strategy="ddp_fork")
    first_files, first_ckpt = sorted(p.name for p in ckpts.iterdir()), load(ckpts / "latest.ckpt")
    second = ddp_train(wall_data, out, STEPS, root / "record-second")
    return SimpleNamespace(out=out, first=first, second=second, first_files=first_files, first_ckpt=first_ckpt,
                           files=sorted(p.name for p in ckpts.iterdir()), ckpt=load(ckpts / "latest.ckpt"),
                           cfg=train_config(wall_data, out, STEPS, *COMMON))


def test_ddp_with_the_same_data_on_every_rank_equals_a_single_process(wall_data, tmp_path, single_run):
    records = ddp_train(wall_data, tmp_path / "run", STEPS, tmp_path / "record", same_data=True)
    assert records[0]["batches"] == records[1]["batches"]  # the premise: both ranks saw rank 0's clips
    ddp = load(tmp_path / "run" / "checkpoints" / "latest.ckpt")
    assert ddp["global_step"] == single_run["global_step"] == STEPS
    assert_same_state(ddp["state_dict"], single_run["state_dict"])
    assert_same_state(records[1]["state_dict"], ddp["state_dict"])


def test_ddp_ranks_train_on_different_batches(ddp_resumed):
    first, second = ddp_resumed.first, ddp_resumed.second
    for rank in range(WORLD):  # each rank draws StepBatches' stream for its own rank
        assert first[rank]["batches"] == expected_batches(ddp_resumed.cfg, rank, 0, 2)  # ddp_fork
        assert second[rank]["batches"] == expected_batches(ddp_resumed.cfg, rank, 2, STEPS - 2)  # ddp
    assert first[0]["batches"] != first[1]["batches"]
    assert second[0]["batches"] != second[1]["batches"]


def test_ddp_all_reduces_gradients_as_a_mean(ddp_resumed, single_run, wall_data, tmp_path, monkeypatch):
    ranks = [rec["state_dict"] for rec in ddp_resumed.second]
    # Different batches, yet identical weights on both ranks: only synchronised gradients do that.
    assert_same_state(ranks[0], ranks[1], atol=0)
    assert_same_state(ranks[0], ddp_resumed.ckpt["state_dict"], atol=0)
    # ... and they are the weights of one process that averages both ranks' losses each step.
    mean_over_ranks(monkeypatch)
    averaged = single_train(wall_data, tmp_path / "averaged")
    monkeypatch.undo()
    assert_same_state(ddp_resumed.ckpt["state_dict"], averaged["state_dict"])
    # The check can fail: rank 1's data changed the result well beyond the tolerance.
    assert max_diff(ddp_resumed.ckpt["state_dict"], single_run["state_dict"]) > 100 * ATOL


def test_ddp_checkpoints_are_written_by_rank_0_only(ddp_resumed):
    assert ddp_resumed.first_files == ["latest.ckpt", "step0000002.ckpt"]  # no temp file left behind
    assert ddp_resumed.files == ["latest.ckpt", "step0000002.ckpt", "step0000004.ckpt"]
    assert ddp_resumed.first_ckpt["global_step"] == 2 and ddp_resumed.ckpt["global_step"] == STEPS
    for run in (ddp_resumed.first, ddp_resumed.second):
        assert run[1]["written"] == []
        assert run[0]["written"] and all(name.endswith(".tmp") for name in run[0]["written"])  # then renamed


def test_ddp_run_extended_to_more_steps_resumes_at_the_saved_step(ddp_resumed):
    for rank, (first, second) in enumerate(zip(ddp_resumed.first, ddp_resumed.second)):
        assert (first["start_step"], first["end_step"]) == (0, 2)
        assert (second["start_step"], second["end_step"]) == (2, STEPS)  # resumed, not restarted
        # the batch stream continues where it stopped: steps 2..3 of this rank's stream
        assert second["batches"] == expected_batches(ddp_resumed.cfg, rank, 2, STEPS - 2)
    assert int(ddp_resumed.ckpt["state_dict"]["ema.n_averaged"]) == STEPS  # the EMA was restored too


def test_wandb_offline_run_is_written_under_out_dir(wall_data, tmp_path):
    pytest.importorskip("wandb")
    out, cwd, home = tmp_path / "run", tmp_path / "cwd", tmp_path / "home"
    overrides = [*TRAIN_OVERRIDES, f"data.path={wall_data}", f"out_dir={out}", "training.max_steps=2",
                 "logging.wandb=true", "logging.wandb_offline=true"]
    # No network: offline mode, no key, and a proxy that refuses every connection.
    env = clean_env(WANDB_MODE="offline", WANDB_SILENT="true", WANDB_CONFIG_DIR=str(home / "config"),
                    WANDB_CACHE_DIR=str(home / "cache"), WANDB_DATA_DIR=str(home / "data"),
                    HTTP_PROXY="http://127.0.0.1:9", HTTPS_PROXY="http://127.0.0.1:9",
                    http_proxy="http://127.0.0.1:9", https_proxy="http://127.0.0.1:9", NO_PROXY="", no_proxy="")
    run_cli(["-m", "wmplan.train", *overrides], cwd=cwd, env=env)
    runs = sorted((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, sorted(p.name for p in out.rglob("*"))
    run = runs[0]
    data = list(run.glob("run-*.wandb"))
    assert len(data) == 1
    records = data[0].read_bytes()  # the run's protobuf records; their strings are stored as they are
    for text in (b"train/loss", b"val/loss", b"wmplan/Wall-v0"):  # train and val metrics, the config
        assert text in records, text
    assert not (cwd / "wandb").exists()  # nothing written next to where it was started
    assert load(out / "checkpoints" / "latest.ckpt")["global_step"] == 2
