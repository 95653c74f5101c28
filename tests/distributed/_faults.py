"""Failure scenarios for the no-hang tests (run under torchrun with 2 processes)."""

from __future__ import annotations

import argparse
import time

import torch
from torch.utils.data import DataLoader, IterableDataset

import dltrain
from tests.helpers.tasks import TinyTask, make_data


class Uneven(IterableDataset):
    """Rank 0 gets 3 batches, rank 1 gets 8: a DDP job that would hang at rank 0's end of data."""

    def __iter__(self):
        rank = torch.distributed.get_rank()
        data = make_data(64)
        n = 3 if rank == 0 else 8
        for i in range(n):
            yield data[i * 4:(i + 1) * 4]


class UnequalLengths(IterableDataset):
    """A sized dataset that promises rank 0 three batches and rank 1 five: refused before the epoch starts."""

    def __len__(self):
        return 3 if torch.distributed.get_rank() == 0 else 5

    def __iter__(self):
        data = make_data(64)
        for i in range(len(self)):
            yield data[i * 4:(i + 1) * 4]


class RaiseAt(TinyTask):
    def training_step(self, batch, batch_idx):
        if self.global_rank == 1 and self.trainer.global_step == 3:
            raise ValueError("boom in training_step")
        return super().training_step(batch, batch_idx)


class NoneOnRank1(TinyTask):
    """Rank 1 skips some batches (returns None) and gets a None batch; rank 0 trains on all of them."""

    def training_step(self, batch, batch_idx):
        if self.global_rank == 1 and batch_idx in (2, 5):
            return None
        return super().training_step(batch, batch_idx)


class NoneBatches(IterableDataset):
    """Every rank gets 8 batches; rank 1's batch 6 is None (a loader that skipped every sample of it)."""

    def __len__(self):
        return 8

    def __iter__(self):
        rank = torch.distributed.get_rank()
        data = make_data(64)
        for i in range(8):
            yield None if (rank == 1 and i == 6) else data[i * 4:(i + 1) * 4]


class BrokenPipeline(IterableDataset):
    """Rank 1's data pipeline fails at its fourth batch (as a corrupt shard would)."""

    def __len__(self):
        return 8

    def __iter__(self):
        rank = torch.distributed.get_rank()
        data = make_data(64)
        for i in range(8):
            if rank == 1 and i == 3:
                raise dltrain.DataError("bad payload", url="shard-000003.tar", key="sample-42")
            yield data[i * 4:(i + 1) * 4]


class Unused(TinyTask):
    def __init__(self):
        super().__init__()
        self.unused = torch.nn.Linear(3, 3)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["raise", "exhausted", "unused", "callback", "none", "data", "unequal"])
    args = p.parse_args()
    torch.set_num_threads(1)
    callbacks = []
    if args.mode == "callback":
        class Fail(dltrain.Callback):
            def on_train_epoch_end(self, trainer, task):
                if trainer.global_rank == 0:
                    raise RuntimeError("callback failed on rank 0")

        callbacks.append(Fail())
    trainer = dltrain.Trainer(accelerator="cpu", max_epochs=2, logger=False, enable_progress_bar=False,
                              enable_checkpointing=False, callbacks=callbacks, max_steps=50)
    start = time.monotonic()
    task = {"raise": RaiseAt, "unused": Unused, "none": NoneOnRank1}.get(args.mode, TinyTask)()
    data = {"exhausted": Uneven(), "none": NoneBatches(), "data": BrokenPipeline(), "unequal": UnequalLengths()}.get(
        args.mode, DataLoader(make_data(64), batch_size=4))
    trainer.fit(task, data)
    if args.mode == "none":
        # DDP kept the replicas identical although rank 1 contributed nothing for three batches.
        weights = torch.cat([p.detach().flatten() for p in task.parameters()])
        gathered = trainer.fabric.all_gather(weights)
        assert torch.equal(gathered[0], gathered[1])
        assert trainer.global_step == 16
    print(f"DLTRAIN-TEST-COMPLETED rank {trainer.global_rank} in {time.monotonic() - start:.1f}s", flush=True)


if __name__ == "__main__":
    main()
