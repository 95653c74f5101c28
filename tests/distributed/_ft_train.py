"""One replica group of a fault-tolerant run (``--ft``, with REPLICA_GROUP_ID etc. set), or the plain DDP reference.

A dltrain script as users write it (default progress bar, logger and checkpointing), plus what the tests read:
every rank appends to ``<root>/trace-g<group>-r<rank>.jsonl`` a line per training batch (pid, global step, whether
it stepped, a digest of the weights), and rank 0 of each group writes ``<root>/final-g<group>.pt`` (the weights) at
the end. ``--kill-step S --kill-group G --kill-rank R``: that rank SIGKILLs itself once (a marker file remembers)
after committed step S (``--kill-in step``: inside the training_step of the batch after it, so that the live
groups' all-reduce of that step fails). ``--kill-all-step S``: every rank of every group SIGKILLs itself after
committed step S (the whole job dies; ``--resume`` restarts it from the newest ``last`` checkpoint).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import time
from pathlib import Path

import torch
from torch.nn import functional as F

import dltrain
from dltrain.callbacks import SampleLedger

N, DIM = 64, 8


def write_data(folder: Path, shard_size: int) -> None:
    """The training shards (keys 00000..), written once by the test before any launch."""
    from dltrain.data import write_shards

    g = torch.Generator().manual_seed(7)
    x = torch.randn(N, DIM, generator=g)
    y = x[:, :4].sum(1, keepdim=True) + 0.1 * torch.randn(N, 1, generator=g)
    samples = ({"__key__": f"{i:05d}", "npy": x[i].numpy(), "y.npy": y[i].numpy()} for i in range(N))
    write_shards(samples, str(folder / "train-%06d.tar"), max_count=shard_size)


def digest(module: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, p in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


class Regression(dltrain.Task):
    def __init__(self, kill_in_step: int | None, marker: Path, pace: float) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(DIM, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
        self.kill_in_step, self.marker, self.pace = kill_in_step, marker, pace

    def training_step(self, batch, batch_idx):
        if self.kill_in_step is not None and self.trainer.global_step == self.kill_in_step and not self.marker.exists():
            self.marker.write_text("killed in training_step")
            os.kill(os.getpid(), signal.SIGKILL)
        ft = self.trainer.fault_tolerance
        if ft is not None and ft.replicas < ft.groups:
            # Pace a group that trains alone, so that the killed group (seconds of imports on a loaded machine)
            # is back before the run ends; the more so near the end.
            remaining = self.trainer.max_steps - self.trainer.global_step
            time.sleep(self.pace * (10 if remaining < 8 else 1))
        x, y = batch
        loss = F.mse_loss(self.net(x), y)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        # Stable at the half batch a lone group trains with (momentum 0.9 diverged there now and then), so that the
        # final loss of a run with a failure can be held to that of an uninterrupted run.
        opt = torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.5)
        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, 10, 0.8)}


class Trace(dltrain.Callback):
    """A line per training batch: pid, step, stepped, weights digest; SIGKILL after a committed step."""

    def __init__(self, path: Path, kill_after: int | None, marker: Path, kill_all: int | None = None) -> None:
        self.path, self.kill_after, self.marker, self.kill_all = path, kill_after, marker, kill_all

    def on_train_batch_end(self, trainer, task, outputs, batch, batch_idx):
        ft = trainer.fault_tolerance
        with self.path.open("a") as f:
            f.write(json.dumps({"pid": os.getpid(), "step": trainer.global_step, "epoch": trainer.current_epoch,
                                "batch": batch_idx, "stepped": trainer.loop_state.stepped, "digest": digest(task),
                                "replicas": ft.replicas if ft is not None else None,
                                "healed": ft.healed if ft is not None else None}) + "\n")
        if self.kill_after is not None and trainer.global_step == self.kill_after and trainer.loop_state.stepped \
                and not self.marker.exists():
            self.marker.write_text("killed after a step")
            os.kill(os.getpid(), signal.SIGKILL)
        if self.kill_all is not None and trainer.global_step == self.kill_all and trainer.loop_state.stepped:
            os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", required=True)
    parser.add_argument("--ft", action="store_true")
    parser.add_argument("--min-replicas", type=int, default=1)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--max-steps", type=int, default=40)
    parser.add_argument("--kill-step", type=int, default=None)
    parser.add_argument("--kill-group", type=int, default=0)
    parser.add_argument("--kill-rank", type=int, default=0)
    parser.add_argument("--kill-in", choices=("after", "step"), default="after")
    parser.add_argument("--kill-all-step", type=int, default=None)
    parser.add_argument("--pace", type=float, default=0.3)
    parser.add_argument("--ckpt-every", type=int, default=0)
    parser.add_argument("--quorum-timeout", type=float, default=400)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    root = Path(args.root)
    rank = int(os.environ.get("RANK", "0"))
    group = int(os.environ.get("REPLICA_GROUP_ID", "0")) if args.ft else 0
    dltrain.seed_everything(11)
    marker = root / "killed.marker"
    mine = args.kill_step is not None and group == args.kill_group and rank == args.kill_rank
    kill_after = args.kill_step if mine and args.kill_in == "after" else None
    kill_in_step = args.kill_step if mine and args.kill_in == "step" else None

    from dltrain.callbacks import ModelCheckpoint
    from dltrain.data import StreamingDataset

    callbacks = [SampleLedger(), Trace(root / f"trace-g{group}-r{rank}.jsonl", kill_after, marker,
                                                 None if args.resume else args.kill_all_step)]
    if args.ckpt_every:
        callbacks.append(ModelCheckpoint(dirpath=root / "checkpoints", every_n_train_steps=args.ckpt_every,
                                         save_last=True, save_top_k=0))
    strategy = dltrain.FaultTolerant(min_replicas=args.min_replicas, timeout=30,
                                                                 quorum_timeout=args.quorum_timeout) if args.ft \
        else "auto"
    trainer = dltrain.Trainer(strategy=strategy, max_steps=args.max_steps, default_root_dir=root,
                              callbacks=callbacks, log_every_n_steps=4, accelerator="cpu")
    shards = sorted(str(p) for p in (root / "shards").glob("train-*.tar"))
    data = StreamingDataset(shards, batch_size=args.batch, shuffle=True, seed=3, shuffle_buffer=16,
                            map=lambda s: (torch.from_numpy(s["npy"]), torch.from_numpy(s["y.npy"])))
    task = Regression(kill_in_step, marker, args.pace)
    trainer.fit(task, data, ckpt_path="last" if args.resume else None)
    if trainer.global_rank == 0:
        torch.save({k: v.clone() for k, v in task.state_dict().items()}, root / f"final-g{group}.pt")


if __name__ == "__main__":
    main()
