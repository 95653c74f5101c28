"""Trains a small BatchNorm model with sync_batchnorm=True on CUDA; run by tests/gpu/test_cuda_ddp.py.

Launched either alone (world size 1, batch B, plain BatchNorm) or as two torchrun "nodes" of one process each
sharing one GPU over gloo (world size 2, batch B/2 per rank). With SyncBatchNorm the two runs compute the same
batch statistics, so they must end with the same weights and running statistics.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
from lightning.fabric.strategies import DDPStrategy
from torch import nn
from torch.utils.data import DataLoader, Dataset

import dltrain


class Data(Dataset):
    def __init__(self, n: int) -> None:
        g = torch.Generator().manual_seed(0)
        # Feature scales differ a lot, so per-rank statistics would differ from the global ones.
        self.x = torch.randn(n, 8, generator=g) * torch.linspace(0.1, 10.0, 8) + torch.arange(8.0)
        self.y = torch.randn(n, 1, generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i]


class BNTask(dltrain.Task):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.net = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 1))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--accelerator", default="cuda", help="cpu: a dry run of this script without SyncBatchNorm")
    p.add_argument("--no-sync", action="store_true", help="leave sync_batchnorm off (the test's control run)")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    world = int(os.environ.get("WORLD_SIZE", "1"))
    strategy = DDPStrategy(process_group_backend="gloo") if world > 1 else "auto"
    trainer = dltrain.Trainer(accelerator=args.accelerator, devices=1, num_nodes=world, strategy=strategy,
                              sync_batchnorm=args.accelerator == "cuda" and not args.no_sync, max_epochs=2, enable_checkpointing=False,
                              logger=False, enable_progress_bar=False, seed=0, default_root_dir=out)
    task = BNTask()
    # No shuffling: rank r gets samples r, r+2, ... (the distributed sampler keeps shuffle=False), so the two ranks
    # together see each global batch of the single-process run.
    loader = DataLoader(Data(64), batch_size=args.batch_size // world, shuffle=False)
    trainer.fit(task, loader)
    kinds = sorted({type(m).__name__ for m in task.modules() if "BatchNorm" in type(m).__name__})
    state = {k: v.detach().cpu() for k, v in task.state_dict().items()}
    torch.save(state, out / f"state-rank{trainer.global_rank}-world{world}.pt")
    (out / f"report-rank{trainer.global_rank}-world{world}.json").write_text(
        json.dumps({"bn_kinds": kinds, "world_size": trainer.world_size, "global_step": trainer.global_step,
                    "device": str(next(task.parameters()).device)}))


if __name__ == "__main__":
    main()
