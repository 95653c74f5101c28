"""_train.py's task and data under a chosen strategy (``--strategy fsdp2``), for the sharded-training tests.

Rank zero writes the final weights gathered whole (``final.pt``); with ``--dump-restored`` it also writes the
model and optimizer state as restored from the checkpoint, gathered whole (``restored.pt``), at ``on_train_start``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
from pathlib import Path

import torch
from torch.utils.data import DataLoader

import dltrain
from dltrain import _sharded
from dltrain.callbacks import ModelCheckpoint
from tests.distributed._train import Keyed, KeyTask, KillAt


def full_state(task: torch.nn.Module, optimizer: torch.optim.Optimizer | None) -> dict:
    """Model (and optimizer) state gathered whole, keyed by parameter name, on every rank (a collective)."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True)
    state = {"model": {k: v.detach().clone() for k, v in get_model_state_dict(task, options=options).items()}}
    if optimizer is not None:
        state["optimizer"] = get_optimizer_state_dict(task, optimizer, options=options)
    return state


class DumpRestored(dltrain.Callback):
    def __init__(self, out: Path) -> None:
        self.out = out

    def on_train_start(self, trainer, task):  # after the optimizer state was restored
        state = full_state(task, trainer.optimizers[0])
        if trainer.is_global_zero:
            torch.save(state, self.out / "restored.pt")


class SelfSharded(KeyTask):
    """Shards itself in configure_model on the strategy's mesh: each Linear, then the task (LayerNorm's
    parameters go with the task's group)."""

    def configure_model(self):
        from torch.distributed.fsdp import fully_shard

        mesh = self.device_mesh["data_parallel"]
        for layer in (self.net[0], self.net[4]):
            fully_shard(layer, mesh=mesh)
        fully_shard(self, mesh=mesh)


class NoneOnRank1(KeyTask):
    """Rank 1 has no loss for batch 2."""

    def training_step(self, batch, batch_idx):
        if self.global_rank == 1 and batch_idx == 2:
            return None
        return super().training_step(batch, batch_idx)


class Slow(dltrain.Callback):
    """Sleep after every batch: a run long enough to be interrupted from outside."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_train_batch_end(self, trainer, task, outputs, batch, batch_idx):
        import time

        time.sleep(self.seconds)


def kill_before_publish(nth: int, marker: Path) -> None:
    """SIGKILL global rank zero at its ``nth`` sharded save, after every rank wrote its shards, before the
    directory is renamed into place."""
    real = _sharded.publish
    count = {"n": 0}

    def publish(tmp, final):
        count["n"] += 1
        if count["n"] == nth and not marker.exists():
            marker.write_text(f"killed before publishing {final}")
            os.kill(os.getpid(), signal.SIGKILL)
        return real(tmp, final)

    _sharded.publish = publish  # type: ignore[assignment]


def kill_in_shard_write(nth: int, marker: Path) -> None:
    """SIGKILL global rank 1 at its ``nth`` sharded save, in the middle of writing its shard file (half of a file
    in the temporary directory), while rank 0 is writing its own."""
    import torch.distributed.checkpoint as dcp

    real = dcp.save
    count = {"n": 0}

    def save(state_dict, *, checkpoint_id=None, **kwargs):
        count["n"] += 1
        if count["n"] == nth and torch.distributed.get_rank() == 1 and not marker.exists():
            marker.write_text(f"killed writing shards of {checkpoint_id}")
            Path(checkpoint_id, "__1_0.distcp").write_bytes(b"\0" * 100)
            os.kill(os.getpid(), signal.SIGKILL)
        return real(state_dict, checkpoint_id=checkpoint_id, **kwargs)

    dcp.save = save  # Fabric imports it from the module at each save


def kill_before_commit(nth: int, marker: Path) -> None:
    """On an object store: SIGKILL global rank zero at its ``nth`` save after every part is written, before the
    commit object that names them."""
    from dltrain import _remote_checkpoint

    real = _remote_checkpoint.commit
    count = {"n": 0}

    def commit(url, parts, *args, **kwargs):
        count["n"] += 1
        if count["n"] == nth and not marker.exists():
            marker.write_text(f"killed before committing {url} (parts {parts})")
            os.kill(os.getpid(), signal.SIGKILL)
        return real(url, parts, *args, **kwargs)

    _remote_checkpoint.commit = commit  # type: ignore[assignment]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--strategy", default="fsdp2")
    p.add_argument("--precision", default="32-true")
    p.add_argument("--samples", type=int, default=96)
    p.add_argument("--batch-size", type=int, default=8, help="global batch size")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--accumulate", type=int, default=1)
    p.add_argument("--clip", type=float, default=None)
    p.add_argument("--every", type=int, default=2, help="checkpoint every n steps")
    p.add_argument("--dropout", type=float, default=0.2)
    p.add_argument("--kill-step", type=int, default=None)
    p.add_argument("--kill-rank", type=int, default=0)
    p.add_argument("--kill-before-publish", type=int, default=None)
    p.add_argument("--kill-in-shard-write", type=int, default=None)
    p.add_argument("--kill-before-commit", type=int, default=None)
    p.add_argument("--ckpt-dir", default=None, help="ModelCheckpoint's dirpath (default: OUT/ckpt; may be s3://...)")
    p.add_argument("--async-save", action="store_true", help="ModelCheckpoint(async_save=True)")
    p.add_argument("--resume", default=None, help="'last' or a checkpoint path")
    p.add_argument("--dump-restored", action="store_true")
    p.add_argument("--validate-last", action="store_true",
                   help="after fit, validate from last.ckpt and from it consolidated")
    p.add_argument("--keep-best", action="store_true", help="ModelCheckpoint(monitor='train/loss', save_top_k=1)")
    p.add_argument("--step-sleep", type=float, default=0.0, help="seconds to sleep after every batch")
    p.add_argument("--self-sharded", action="store_true", help="the task shards itself in configure_model")
    p.add_argument("--none-on-rank1", action="store_true", help="training_step returns None on rank 1, batch 2")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)

    # --keep-best: keep only the best by train/loss; a save that is not kept is written straight to last.ckpt
    # (a sharded directory replacing an existing name: the link swap).
    keep = {"monitor": "train/loss", "save_top_k": 1} if args.keep_best else {"save_top_k": 2}
    callbacks: list[dltrain.Callback] = [ModelCheckpoint(dirpath=args.ckpt_dir or out / "ckpt", every_n_epochs=1,
                                                         every_n_train_steps=args.every, async_save=args.async_save,
                                                         **keep)]
    if args.kill_step is not None:
        callbacks.append(KillAt(args.kill_step, args.kill_rank, out / "killed.marker"))
    if args.step_sleep:
        callbacks.append(Slow(args.step_sleep))
    if args.dump_restored:
        callbacks.append(DumpRestored(out))
    if args.kill_before_publish is not None:
        kill_before_publish(args.kill_before_publish, out / "killed-in-save.marker")
    if args.kill_before_commit is not None:
        kill_before_commit(args.kill_before_commit, out / "killed-in-save.marker")
    if args.kill_in_shard_write is not None:
        kill_in_shard_write(args.kill_in_shard_write, out / "killed-in-save.marker")
    trainer = dltrain.Trainer(accelerator="cpu", strategy=args.strategy, precision=args.precision,
                              max_epochs=args.epochs, default_root_dir=str(out), seed=11,
                              accumulate_grad_batches=args.accumulate, gradient_clip_val=args.clip,
                              callbacks=callbacks, logger=False, enable_progress_bar=False, log_every_n_steps=2)
    per_rank = args.batch_size // trainer.world_size
    torch.manual_seed(5)
    kind = SelfSharded if args.self_sharded else NoneOnRank1 if args.none_on_rank1 else KeyTask
    task = kind(args.out, dropout=args.dropout)
    seen_dtypes: set[str] = set()  # the weight dtype the first layer computes with (FSDP2's mixed precision)
    task.net[0].register_forward_pre_hook(lambda m, _: seen_dtypes.add(str(m.weight.dtype)))
    train = DataLoader(Keyed(args.samples), batch_size=per_rank, shuffle=True)
    val = DataLoader(Keyed(21), batch_size=4)
    trainer.fit(task, train, val, ckpt_path=args.resume)
    final = full_state(task, trainer.optimizers[0])
    # validate() from the run's last checkpoint (sharded directory) and from it consolidated (one full file).
    evaluated: dict[str, float] = {}
    last = out / "ckpt" / "last.ckpt"
    if args.validate_last and last.exists():
        from dltrain import checkpoint as ckpt_io

        evaluated["last"] = trainer.validate(task, val, ckpt_path=str(last), verbose=False)[0]["val/loss"]
        if trainer.is_global_zero and last.is_dir():
            ckpt_io.consolidate(last, out / "consolidated.ckpt")
        trainer.fabric.barrier()
        if (out / "consolidated.ckpt").exists():
            evaluated["consolidated"] = trainer.validate(task, val, ckpt_path=str(out / "consolidated.ckpt"),
                                                         verbose=False)[0]["val/loss"]
    report = {"rank": trainer.global_rank, "world_size": trainer.world_size, "global_step": trainer.global_step,
              "metrics": {k: float(v) for k, v in trainer.callback_metrics.items()},
              "compute_dtypes": sorted(seen_dtypes),
              "validated": evaluated,
              "fsdp_modules": [name for name, m in task.named_modules() if type(m).__name__.startswith("FSDP")],
              "ckpt": sorted(f.name for f in (out / "ckpt").iterdir()) if (out / "ckpt").is_dir() else [],
              "last_target": os.readlink(out / "ckpt" / "last.ckpt") if (out / "ckpt" / "last.ckpt").is_symlink()
              else None}
    (out / f"report-rank{trainer.global_rank}.json").write_text(json.dumps(report))
    if trainer.is_global_zero:
        torch.save(final, out / "final.pt")


if __name__ == "__main__":
    main()
