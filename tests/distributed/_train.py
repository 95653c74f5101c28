"""Training script for the distributed and kill/resume tests (python or torchrun).

Every rank appends what it trains on to ``<out>/keys-rank<r>.jsonl`` (global step, sample keys), so the tests can
rebuild the sequence of samples that ended up in the weights; rank zero saves the final weights (``final.pt``:
parameter name -> tensor; under ``--strategy fsdp2`` gathered whole from every rank's shards first).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

import dltrain
from dltrain import checkpoint as ckpt_io
from dltrain.callbacks import ModelCheckpoint


class Keyed(Dataset):
    def __init__(self, n: int, seed: int = 7) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 8, generator=g)
        self.y = self.x[:, :4].sum(1, keepdim=True) + 0.1 * torch.randn(n, 1, generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i], i


def stream_loader(args, batch_size, training):
    from dltrain.data import StreamingDataset, write_shards
    from dltrain.data.index import index_exists, load_index

    folder = args.shards_url or str(Path(args.out) / "shards")  # a folder, or a prefix on an object store
    if not index_exists(f"{folder}/train.index.json") and int(os.environ.get("RANK", "0")) == 0:
        ds = Keyed(args.n)
        samples = ({"__key__": f"{i:05d}", "npy": ds.x[i].numpy(), "y.npy": ds.y[i].numpy(), "cls": i}
                   for i in range(args.n))
        write_shards(samples, f"{folder}/train-%06d.tar", max_count=args.shard_size)
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
    count = len(load_index(f"{folder}/train.index.json")["shards"])
    shards = f"{folder}/train-{{000000..{count - 1:06d}}}.tar"  # a brace pattern, on disk or on the store
    ds = StreamingDataset(shards, batch_size=batch_size, shuffle=training, seed=3, training=training,
                          shuffle_buffer=16, map=lambda s: (torch.from_numpy(s["npy"]), torch.from_numpy(s["y.npy"]),
                                                            s["cls"]))
    return ds.loader(num_workers=args.workers)


class KeyTask(dltrain.Task):
    def __init__(self, out: str, dropout: float = 0.2, scheduler: str = "step") -> None:
        super().__init__()
        self.scheduler = scheduler
        self.net = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.LayerNorm(32), torch.nn.ReLU(),
                                       torch.nn.Dropout(dropout), torch.nn.Linear(32, 1))
        self.out = out
        self._log = None
        import torchmetrics

        self.val_mse = torchmetrics.MeanSquaredError()
        self.val_mse_b = torchmetrics.MeanSquaredError()  # the second validation set's (--multi-val)

    def training_step(self, batch, batch_idx):
        x, y, keys = batch
        if self._log is None:
            self._log = open(Path(self.out) / f"keys-rank{self.global_rank}.jsonl", "a")
        self._log.write(json.dumps({"step": self.trainer.global_step, "epoch": self.trainer.current_epoch,
                                    "keys": [int(k) for k in keys]}) + "\n")
        self._log.flush()
        loss = F.mse_loss(self.net(x), y)
        self.log("train/loss", loss)
        self.log("rank_value", float(self.global_rank), sync_dist=True)
        return loss

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        x, y, keys = batch
        pred = self.net(x)
        self.log("val/loss", F.mse_loss(pred, y))
        self.log("val/count", float(len(keys)), reduce_fx="sum")
        metric = (self.val_mse, self.val_mse_b)[dataloader_idx]
        metric.update(pred, y)
        self.log("val/mse_metric", metric)  # a torchmetrics Metric: synced over ranks at epoch end

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)
        if self.scheduler == "epoch":
            return {"optimizer": opt, "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.StepLR(opt, 1, 0.7),
                                                       "interval": "epoch"}}
        return {"optimizer": opt, "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.StepLR(opt, 5, 0.7),
                                                   "interval": "step"}}


class KillAt(dltrain.Callback):
    """SIGKILL this process after optimizer step ``step`` (on ``rank``), once (a marker file remembers)."""

    def __init__(self, step: int, rank: int, marker: Path) -> None:
        self.step, self.rank, self.marker = step, rank, marker

    def on_train_batch_end(self, trainer, task, outputs, batch, batch_idx):
        if trainer.global_step == self.step and trainer.global_rank == self.rank and not self.marker.exists():
            self.marker.write_text("killed")
            os.kill(os.getpid(), signal.SIGKILL)


class CheckpointThenKill(ModelCheckpoint):
    """A ModelCheckpoint that SIGKILLs this process (on ``rank``) in ``on_train_epoch_end`` of epoch ``epoch``, right
    after its own epoch-end save, once (a marker file remembers).

    The Trainer runs checkpoint callbacks after every other callback, so a callback of its own would kill before the
    epoch-end save; here the save is complete when it kills, and the epoch-interval schedulers, which step after
    the callbacks, have not stepped yet.
    """

    def __init__(self, epoch: int, rank: int, marker: Path, **kwargs) -> None:
        super().__init__(**kwargs)
        self.epoch, self.rank, self.marker = epoch, rank, marker

    def on_train_epoch_end(self, trainer, task):
        super().on_train_epoch_end(trainer, task)
        if trainer.current_epoch == self.epoch and trainer.global_rank == self.rank and not self.marker.exists():
            self.marker.write_text("killed at epoch end")
            os.kill(os.getpid(), signal.SIGKILL)


class KillAfter(dltrain.Callback):
    """SIGKILL this process (on ``rank``) ``seconds`` after ``on_fit_start``, once; nothing if the run ends first."""

    def __init__(self, seconds: float, rank: int, marker: Path) -> None:
        self.seconds, self.rank, self.marker = seconds, rank, marker

    def on_fit_start(self, trainer, task):
        if trainer.global_rank != self.rank or self.marker.exists():
            return

        def kill() -> None:
            self.marker.write_text("killed by timer")
            os.kill(os.getpid(), signal.SIGKILL)

        timer = threading.Timer(self.seconds, kill)
        timer.daemon = True
        timer.start()


def kill_during_save(nth: int, marker: Path) -> None:
    """SIGKILL rank 0 in the middle of writing its ``nth`` checkpoint (half the bytes are on disk)."""
    real_save = ckpt_io.save_atomic
    count = {"n": 0}

    def save_atomic(obj, path, *args):
        count["n"] += 1
        if count["n"] == nth and not marker.exists():
            import io

            marker.write_text("killed in save")
            buf = io.BytesIO()
            torch.save(obj, buf)
            path = Path(path)
            with open(path.with_name(f".{path.name}.tmp-{os.getpid()}"), "wb") as f:
                f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
                f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        return real_save(obj, path, *args)

    ckpt_io.save_atomic = save_atomic  # type: ignore[assignment]


SHARDED_SAVE_PHASES = ("write", "publish", "link")


def kill_during_sharded_save(nth: int, phase: str, rank: int, marker: Path) -> None:
    """SIGKILL a rank in the middle of the ``nth`` sharded checkpoint save (``strategy="fsdp2"``), at ``phase``:

    - ``write``: global rank ``rank`` while writing its shards (half a shard file in the temporary directory; the
      other ranks are writing theirs or wait for it at the barrier);
    - ``publish``: rank zero after every rank's shards are on disk, before the directory is renamed into place;
    - ``link``: rank zero after the directory is in place, while re-pointing ``last.ckpt`` at it (the temporary
      link is made, the rename over ``last.ckpt`` is not).
    """
    import socket

    import torch.distributed.checkpoint as dcp

    from dltrain import _sharded

    count = {"n": 0}
    real_save, real_dcp_save = _sharded.save, dcp.save
    real_publish, real_link = _sharded.publish, _sharded.link_atomic

    def armed() -> bool:
        return count["n"] == nth and not marker.exists()

    def die(what: str) -> None:
        marker.write_text(f"killed in sharded save #{nth} ({phase}): {what}")
        os.kill(os.getpid(), signal.SIGKILL)

    def save(trainer, path, metadata, *args, **kwargs):
        count["n"] += 1
        return real_save(trainer, path, metadata, *args, **kwargs)

    def dcp_save(state_dict, *, checkpoint_id=None, **kwargs):
        me = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        if phase == "write" and me == rank and armed():
            Path(checkpoint_id, f"__{me}_0.distcp").write_bytes(bytes(range(256)))  # a shard file cut short (fixed bytes: replayable)
            die(f"rank {me} writing its shards into {checkpoint_id}")
        return real_dcp_save(state_dict, checkpoint_id=checkpoint_id, **kwargs)

    real_async_save = dcp.async_save

    def dcp_async_save(state_dict, *, checkpoint_id=None, **kwargs):  # async_save=True: the same kill, its write
        me = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        if phase == "write" and me == rank and armed():
            Path(checkpoint_id, f"__{me}_0.distcp").write_bytes(os.urandom(256))
            die(f"rank {me} writing its shards into {checkpoint_id} (async_save)")
        return real_async_save(state_dict, checkpoint_id=checkpoint_id, **kwargs)

    def publish(tmp, final):
        if phase == "publish" and armed():
            die(f"every shard of {final} written to {tmp}, not renamed")
        return real_publish(tmp, final)

    def link_atomic(target, link):
        if phase == "link" and armed():
            # What link_atomic has done just before its rename: the new link under its temporary name.
            tmp = link.with_name(f".{link.name}.tmp-{socket.gethostname()}-{os.getpid()}")
            os.symlink(target.name, tmp, target_is_directory=True)
            die(f"{target} published, {link} not re-pointed")
        return real_link(target, link)

    _sharded.save, _sharded.publish, _sharded.link_atomic = save, publish, link_atomic  # type: ignore[assignment]
    dcp.save = dcp_save  # dltrain looks it up in the module at each save
    dcp.async_save = dcp_async_save


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    # torchrun takes a bare "--n" for an abbreviation of its own options: give "--samples" under torchrun.
    p.add_argument("--n", "--samples", dest="n", type=int, default=96)
    p.add_argument("--batch-size", type=int, default=8, help="global batch size")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--ledger", action="store_true", help="add a SampleLedger (stream data): out/ledger")
    p.add_argument("--ledger-dir", default=None, help="the SampleLedger's folder (default out/ledger; may be s3://...)")
    p.add_argument("--data", choices=["map", "stream"], default="map")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--accumulate", type=int, default=1)
    p.add_argument("--clip", type=float, default=None)
    p.add_argument("--every", type=int, default=2, help="checkpoint every n steps")
    p.add_argument("--kill-step", type=int, default=None)
    p.add_argument("--kill-rank", type=int, default=0)
    p.add_argument("--kill-in-save", type=int, default=None, help="SIGKILL in the middle of the nth checkpoint save")
    p.add_argument("--kill-in-save-phase", choices=SHARDED_SAVE_PHASES, default="write",
                   help="sharded saves (fsdp2): where in the save (see kill_during_sharded_save)")
    p.add_argument("--kill-in-save-rank", type=int, default=0, help="sharded saves, phase 'write': which rank")
    p.add_argument("--strategy", choices=["auto", "ddp", "fsdp2"], default="auto")
    p.add_argument("--async-save", action="store_true", help="ModelCheckpoint(async_save=True)")
    p.add_argument("--ckpt-dir", default=None, help="ModelCheckpoint's dirpath (default OUT/ckpt; may be s3://...)")
    p.add_argument("--shards-url", default=None,
                   help="stream data: read (and, rank 0, first write) the shards there (a folder or s3://...)")
    p.add_argument("--kill-steps", default="",
                   help="more step kills, 'STEP:RANK,STEP:RANK': each once (marker killed-step<STEP>.marker)")
    p.add_argument("--kill-epoch-end", type=int, default=None,
                   help="SIGKILL in on_train_epoch_end of this epoch, after ModelCheckpoint has saved")
    p.add_argument("--kill-epoch-end-rank", type=int, default=0)
    p.add_argument("--kill-after", type=float, default=None, help="SIGKILL this many seconds after fit starts")
    p.add_argument("--kill-after-rank", type=int, default=0)
    p.add_argument("--scheduler", choices=["step", "epoch"], default="step",
                   help="step: StepLR(5, 0.7) every optimizer step; epoch: StepLR(1, 0.7) every epoch")
    p.add_argument("--shard-size", type=int, default=13, help="samples per shard of the stream data")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--restart-skew", type=float, default=0.0,
                   help="in a torchrun-restarted round, rank 0 starts its Trainer this many seconds late")
    p.add_argument("--sync-batchnorm", action="store_true")
    p.add_argument("--multi-val", action="store_true", help="two validation sets (map data)")
    p.add_argument("--dropout", type=float, default=0.2)
    p.add_argument("--logger", choices=["none", "csv", "wandb"], default="none")
    p.add_argument("--ema", action="store_true",
                   help="EMAWeightAveraging(decay=0.8): validation and final.pt hold the averaged weights")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    if os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0" and os.environ.get("RANK") == "0":
        # The other ranks reach the process-group rendezvous first and read whatever the store holds for rank 0
        # by then: this makes a restarted round that would pick up the killed round's addresses do so every time.
        time.sleep(args.restart_skew)

    saving = {"dirpath": args.ckpt_dir or out / "ckpt", "every_n_train_steps": args.every, "every_n_epochs": 1,
              "save_top_k": 2, "async_save": args.async_save}
    if args.kill_epoch_end is None:
        callbacks: list[dltrain.Callback] = [ModelCheckpoint(**saving)]
    else:  # kills right after the epoch-end checkpoint
        callbacks = [CheckpointThenKill(args.kill_epoch_end, args.kill_epoch_end_rank, out / "killed-epoch.marker",
                                        **saving)]
    if args.ledger:
        from dltrain.callbacks import SampleLedger

        callbacks.append(SampleLedger(args.ledger_dir))
    if args.ema:
        from dltrain.callbacks import EMAWeightAveraging

        callbacks.append(EMAWeightAveraging(decay=0.8))
    if args.kill_step is not None:
        callbacks.append(KillAt(args.kill_step, args.kill_rank, out / "killed.marker"))
    for spec in filter(None, args.kill_steps.split(",")):
        step, rank = (int(x) for x in spec.split(":"))
        callbacks.append(KillAt(step, rank, out / f"killed-step{step}.marker"))
    if args.kill_after is not None:
        callbacks.append(KillAfter(args.kill_after, args.kill_after_rank, out / "killed-timer.marker"))
    if args.kill_in_save is not None and args.strategy == "fsdp2":
        kill_during_sharded_save(args.kill_in_save, args.kill_in_save_phase, args.kill_in_save_rank,
                                 out / "killed-in-save.marker")
    elif args.kill_in_save is not None:
        kill_during_save(args.kill_in_save, out / "killed-in-save.marker")
    logger: object = False
    if args.logger == "csv":
        from dltrain.loggers import CSVLogger

        logger = CSVLogger(out, name="logs")
    elif args.logger == "wandb":
        from dltrain.loggers import WandbLogger

        logger = WandbLogger(project="dltrain-test", save_dir=str(out), offline=True)
    trainer = dltrain.Trainer(accelerator="cpu", strategy=args.strategy, max_epochs=args.epochs,
                              default_root_dir=str(out), seed=11,
                              accumulate_grad_batches=args.accumulate, gradient_clip_val=args.clip,
                              callbacks=callbacks, logger=logger, enable_progress_bar=False,
                              log_every_n_steps=2, sync_batchnorm=args.sync_batchnorm)
    per_rank = args.batch_size // trainer.world_size
    torch.manual_seed(5)
    task = KeyTask(args.out, dropout=args.dropout, scheduler=args.scheduler)
    if args.data == "map":
        train = DataLoader(Keyed(args.n), batch_size=per_rank, shuffle=True, num_workers=args.workers,
                           persistent_workers=args.workers > 0)
        val = DataLoader(Keyed(21), batch_size=4)
        if args.multi_val:  # two validation sets: metrics per set, suffixed /dataloader_idx_<i>
            val = [val, DataLoader(Keyed(13, seed=8), batch_size=3)]
    else:
        train = stream_loader(args, per_rank, training=True)
        val = stream_loader(args, 4, training=False).stream  # the dataset itself: the Trainer makes the loader
    trainer.fit(task, train, val, ckpt_path="last" if args.resume else None)
    report = {
        "rank": trainer.global_rank,
        "world_size": trainer.world_size,
        "global_step": trainer.global_step,
        "metrics": {k: float(v) for k, v in trainer.callback_metrics.items()},
                "files": sorted(str(f.relative_to(out)) for f in out.rglob("*") if f.is_file()),
    }
    if args.multi_val:  # the same sets through validate(): the values fit reported for the final weights
        report["validate"] = trainer.validate(task, val, verbose=False)
    (out / f"report-rank{trainer.global_rank}.json").write_text(json.dumps(report))
    final = task.state_dict()
    if args.strategy == "fsdp2":  # parameters are DTensors: gathered whole (a collective: every rank takes part)
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        final = get_model_state_dict(task, options=StateDictOptions(full_state_dict=True))
    if trainer.is_global_zero:
        torch.save(final, out / "final.pt")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
