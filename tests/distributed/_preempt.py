"""Training script for the signal tests: trains until a signal arrives (or to the end), logging keys per step.

Reuses _train.py's task and data. The test sends the signal once the keys file shows `--signal-after` steps.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch.utils.data import DataLoader

import dltrain
from dltrain.callbacks import ModelCheckpoint, Preemption
from tests.distributed._train import Keyed, KeyTask


class Slow(dltrain.Callback):
    """Slows steps down so that a signal sent from the test lands mid-epoch."""

    def on_train_batch_end(self, trainer, task, outputs, batch, batch_idx):
        import time

        time.sleep(0.05)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--slow", action="store_true")
    p.add_argument("--requeue", action="store_true")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    callbacks = [ModelCheckpoint(dirpath=out / "ckpt", every_n_train_steps=1000, every_n_epochs=0),
                 Preemption(requeue=args.requeue, check_every_n_steps=2)]
    if args.slow:
        callbacks.append(Slow())
    trainer = dltrain.Trainer(accelerator="cpu", max_epochs=2, default_root_dir=str(out), seed=11, logger=False,
                              callbacks=callbacks, enable_progress_bar=False, enable_model_summary=False)
    torch.manual_seed(5)
    task = KeyTask(args.out, dropout=0.2)
    train = DataLoader(Keyed(96), batch_size=8 // trainer.world_size, shuffle=True)
    trainer.fit(task, train, ckpt_path="last" if args.resume else None)
    if trainer.is_global_zero:
        torch.save(task.state_dict(), out / "final.pt")
        (out / "done.json").write_text(json.dumps({"global_step": trainer.global_step}))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
