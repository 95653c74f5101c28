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


class RaiseAt(TinyTask):
    def training_step(self, batch, batch_idx):
        if self.global_rank == 1 and self.trainer.global_step == 3:
            raise ValueError("boom in training_step")
        return super().training_step(batch, batch_idx)


class Unused(TinyTask):
    def __init__(self):
        super().__init__()
        self.unused = torch.nn.Linear(3, 3)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["raise", "exhausted", "unused", "callback"])
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
    task = {"raise": RaiseAt, "unused": Unused}.get(args.mode, TinyTask)()
    data = Uneven() if args.mode == "exhausted" else DataLoader(make_data(64), batch_size=4)
    trainer.fit(task, data)
    print(f"DLTRAIN-TEST-COMPLETED rank {trainer.global_rank} in {time.monotonic() - start:.1f}s", flush=True)


if __name__ == "__main__":
    main()
