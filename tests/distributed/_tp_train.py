"""Tensor parallelism on a 2-D mesh (data x tensor) for the TP tests: an MLP whose first two Linear layers are
split column-wise then row-wise over ``device_mesh["tensor_parallel"]`` in ``configure_model`` (the last layer is
not), sharded over ``"data_parallel"`` by dltrain's default plan.

``--tp 1 --strategy auto`` is the reference: one process, the same MLP unsplit. Every rank appends the sample keys
of each batch to ``keys-rank<global rank>.jsonl``; rank zero writes the final state gathered whole (``final.pt``,
and ``restored.pt`` with ``--dump-restored``); every rank writes ``report-rank<r>.json``. Validation reads a
StreamingDataset (``--val-shards``): the Trainer gives its loader the data-parallel split (``set_split``); the
report holds that split and what ``dltrain.data.resolve_rank`` gives after the fit (the global rank: no state left).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
from torch.utils.data import DataLoader

import dltrain
from dltrain.callbacks import ModelCheckpoint
from dltrain.data import resolve_rank
from tests.distributed._sharded_train import DumpRestored, full_state
from tests.distributed._train import Keyed, KeyTask


def tensor_parallel_plan() -> dict:
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel

    return {"net.0": ColwiseParallel(), "net.2": RowwiseParallel()}


class TPTask(KeyTask):
    """_train.py's task (logging, validation metrics, SGD with a step scheduler) with an MLP of two hidden layers:
    the first two Linear layers are split over the tensor-parallel ranks, the last one is not."""

    def __init__(self, out: str) -> None:
        super().__init__(out, dropout=0.0)
        self.net = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 16),
                                       torch.nn.ReLU(), torch.nn.Linear(16, 1))

    def configure_model(self):
        mesh = self.device_mesh
        if mesh is not None and mesh["tensor_parallel"].size() > 1:
            from torch.distributed.tensor.parallel import parallelize_module

            parallelize_module(self, mesh["tensor_parallel"], tensor_parallel_plan())

    def validation_step(self, batch, batch_idx):
        super().validation_step(batch, batch_idx)
        self.log("val/keysum", float(sum(int(k) for k in batch[2])), reduce_fx="sum")  # each sample counted once


def lightning_strategy(tp: int, world: int):
    """Lightning's spelling: a ModelParallelStrategy whose own function applies the same tensor-parallel plan and
    FSDP2 as dltrain's default plan does (the child ``net``, then the task)."""
    from lightning.fabric.strategies import ModelParallelStrategy

    def parallelize(task, mesh):
        from torch.distributed.fsdp import fully_shard
        from torch.distributed.tensor.parallel import parallelize_module

        parallelize_module(task, mesh["tensor_parallel"], tensor_parallel_plan())
        fully_shard(task.net, mesh=mesh["data_parallel"])
        fully_shard(task, mesh=mesh["data_parallel"])
        return task

    return ModelParallelStrategy(parallelize_fn=parallelize, data_parallel_size=world // tp, tensor_parallel_size=tp)


class LightningTask(TPTask):
    def configure_model(self):  # the strategy's function parallelizes
        pass


def stream_loader(shards: str, stem: str, batch_size: int, training: bool):
    from dltrain.data import StreamingDataset

    urls = sorted(str(p) for p in Path(shards).glob(f"{stem}-*.tar"))
    ds = StreamingDataset(urls, batch_size=batch_size, shuffle=training, training=training, seed=3,
                          shuffle_buffer=16,
                          map=lambda s: (torch.from_numpy(s["npy"]), torch.from_numpy(s["y.npy"]), s["cls"]))
    return ds.loader(num_workers=0)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--val-shards", required=True)
    p.add_argument("--strategy", choices=["fsdp2", "auto", "lightning"], default="fsdp2")
    p.add_argument("--tp", type=int, default=2)
    p.add_argument("--samples", type=int, default=96)
    p.add_argument("--batch-size", type=int, default=8, help="global batch size")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--every", type=int, default=3, help="checkpoint every n steps")
    p.add_argument("--resume", default=None)
    p.add_argument("--dump-restored", action="store_true")
    p.add_argument("--train-stream", action="store_true",
                   help="train on the StreamingDataset shards train-*.tar in --val-shards' folder, with a SampleLedger")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    strategy: object = (lightning_strategy(args.tp, world) if args.strategy == "lightning"
                        else dltrain.FSDP2(tensor_parallel_size=args.tp) if args.strategy == "fsdp2" else "auto")
    callbacks: list[dltrain.Callback] = [ModelCheckpoint(dirpath=out / "ckpt", every_n_epochs=1, every_n_train_steps=args.every,
                                                         save_top_k=-1)]
    if args.dump_restored:
        callbacks.append(DumpRestored(out))
    if args.train_stream:
        from dltrain.callbacks import SampleLedger

        callbacks.append(SampleLedger())
    trainer = dltrain.Trainer(accelerator="cpu", strategy=strategy, max_epochs=args.epochs,  # type: ignore[arg-type]
                              default_root_dir=str(out), seed=11, callbacks=callbacks, logger=False,
                              enable_progress_bar=False, log_every_n_steps=2, num_sanity_val_steps=0)
    torch.manual_seed(5)
    task = (LightningTask if args.strategy == "lightning" else TPTask)(args.out)
    per_replica = args.batch_size // trainer.data_parallel_size
    train = (stream_loader(args.val_shards, "train", per_replica, training=True) if args.train_stream
             else DataLoader(Keyed(args.samples), batch_size=per_replica, shuffle=True))
    val = stream_loader(args.val_shards, "val", 4, training=False)
    trainer.fit(task, train, val, ckpt_path=args.resume)
    final = full_state(task, trainer.optimizers[0])
    report = {"rank": trainer.global_rank, "world_size": trainer.world_size,
              "data_parallel_rank": trainer.data_parallel_rank, "data_parallel_size": trainer.data_parallel_size,
              "global_step": trainer.global_step,
              "loader_splits": {"val": val.split, "train": getattr(train, "split", None)},
              "resolved_after_fit": resolve_rank(),
              "metrics": {k: float(v) for k, v in trainer.callback_metrics.items()},
              "dtensor_params": sorted(n for n, q in task.named_parameters()
                                       if type(q).__name__ == "DTensor"),
              "ckpt": sorted(f.name for f in (out / "ckpt").iterdir()) if (out / "ckpt").is_dir() else []}
    (out / f"report-rank{trainer.global_rank}.json").write_text(json.dumps(report))
    if trainer.is_global_zero:
        torch.save(final, out / "final.pt")


if __name__ == "__main__":
    main()
