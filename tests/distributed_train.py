"""``wmplan-train`` as the DDP tests launch it: the real Hydra CLI, plus what the tests need to see.

Lightning's ``ddp`` strategy starts ranks 1.. by re-running rank 0's command line (Hydra's run
dir appended), so a DDP run under test must be a script of its own, not pytest. This is that
script (tests/test_distributed.py runs it in a subprocess):

    python tests/distributed_train.py training.strategy=ddp training.devices=2 training.accelerator=cpu ...

It runs ``wmplan.train.main`` unchanged, except that

* ``WMPLAN_TEST_RECORD=<dir>``: each rank writes ``<dir>/rank<r>.pt`` when training ends: its
  rank, world size, strategy, process-group backend, the step it started at, the
  (episode, start) of every clip it trained on per step, the names of the checkpoint files
  its process wrote, and its final weights;
* ``WMPLAN_TEST_SAME_DATA=1``: every rank trains on rank 0's batches and rank 0's noise, i.e.
  exactly what a single-process run sees.

Both reach the other ranks through the environment, which Lightning copies.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import Callback

import wmplan.train
from wmplan.module import WorldModelModule

RECORD_ENV = "WMPLAN_TEST_RECORD"
SAME_DATA_ENV = "WMPLAN_TEST_SAME_DATA"


class RankRecorder(Callback):
    """Writes what this rank trained on and its final weights to ``<folder>/rank<r>.pt``."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.start_step: int | None = None
        self.batches: dict[int, list[list[int]]] = {}
        self.written: list[str] = []  # checkpoint files this rank's process wrote

    def setup(self, trainer, pl_module, stage: str) -> None:
        io = trainer.strategy.checkpoint_io
        save = io.save_checkpoint

        def save_and_note(checkpoint, path, storage_options=None):
            self.written.append(Path(path).name)
            return save(checkpoint, path, storage_options=storage_options)

        io.save_checkpoint = save_and_note

    def on_train_start(self, trainer, pl_module) -> None:
        self.start_step = trainer.global_step

    def on_train_batch_start(self, trainer, pl_module, batch: dict[str, Any], batch_idx: int) -> None:
        clips = torch.stack([torch.as_tensor(batch["episode"]), torch.as_tensor(batch["start"])], dim=1)
        self.batches.setdefault(trainer.global_step, []).extend(clips.tolist())

    def on_train_end(self, trainer, pl_module) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        record = {
            "rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "strategy": type(trainer.strategy).__name__,
            "backend": str(dist.get_backend()) if dist.is_available() and dist.is_initialized() else None,
            "start_step": self.start_step,
            "end_step": trainer.global_step,
            "batches": self.batches,
            "written": self.written,
            "state_dict": {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()},
        }
        torch.save(record, self.folder / f"rank{trainer.global_rank}.pt")


class AsRank:
    """A module seen as another rank, for ``_step_generator``'s rank term (every other
    attribute is the module's own)."""

    def __init__(self, module: WorldModelModule, rank: int):
        self._module, self.global_rank = module, rank

    def __getattr__(self, name: str) -> Any:
        return getattr(self._module, name)


class Rank0Batches(wmplan.train.StepBatches):
    """``StepBatches`` that draws rank 0's stream on every rank (however the rank is set)."""

    rank = property(lambda self: 0, lambda self, value: None)


def instrument(record: str | None, same_data: bool) -> None:
    """Patch ``wmplan.train`` in this process as the environment asks (see the module doc)."""
    if record:
        build_trainer = wmplan.train.build_trainer

        def build(cfg, out_dir):
            trainer = build_trainer(cfg, out_dir)
            trainer.callbacks.append(RankRecorder(record))
            return trainer

        wmplan.train.build_trainer = build
    if same_data:
        step_generator = WorldModelModule._step_generator
        wmplan.train.StepBatches = Rank0Batches
        WorldModelModule._step_generator = lambda self, device, batch_idx=0: step_generator(AsRank(self, 0), device, batch_idx)


if __name__ == "__main__":
    instrument(os.environ.get(RECORD_ENV), os.environ.get(SAME_DATA_ENV) == "1")
    wmplan.train.main()
