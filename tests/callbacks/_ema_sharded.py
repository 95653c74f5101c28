"""EMAWeightAveraging under ``--strategy fsdp2`` (torchrun, 2 ranks) or ``auto`` (one process, the same global
batches): writes ``<out>/result.pt`` (rank zero) with the final weights, the checkpoint's averaged weights, the
weights ``load_from_checkpoint`` gives, and the last validation loss."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

import dltrain
from dltrain import checkpoint as ckpt_io
from dltrain.callbacks import EMAWeightAveraging, ModelCheckpoint


class Net(dltrain.Task):
    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU())
        self.head = torch.nn.Linear(16, 1)

    def forward(self, x):
        return self.head(self.body(x))

    def training_step(self, batch, batch_idx):
        return F.mse_loss(self(batch[0]), batch[1])

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", F.mse_loss(self(batch[0]), batch[1]), sync_dist=True)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--strategy", default="auto")
    args = p.parse_args()
    out = Path(args.out)
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 8, generator=g)
    data = TensorDataset(x, x[:, :3].sum(1, keepdim=True))
    trainer = dltrain.Trainer(accelerator="cpu", strategy=args.strategy, max_epochs=2, default_root_dir=str(out),
                              callbacks=[EMAWeightAveraging(decay=0.8),
                                         ModelCheckpoint(dirpath=out / "ckpt", save_last=True)],
                              enable_progress_bar=False, logger=False, num_sanity_val_steps=0)
    torch.manual_seed(1)
    task = Net()
    per_rank = 16 // trainer.world_size
    trainer.fit(task, DataLoader(data, batch_size=per_rank), DataLoader(data, batch_size=per_rank))
    final = task.state_dict()
    if args.strategy == "fsdp2":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        final = get_model_state_dict(task, options=StateDictOptions(full_state_dict=True))
    if trainer.is_global_zero:
        last = trainer.checkpoint_callback.last_model_path
        result = {"final": {k: v.detach().clone() for k, v in final.items()},
                  "averaged_in_checkpoint": ckpt_io.load(last)["averaged_state_dict"],
                  "loaded": Net.load_from_checkpoint(last).state_dict(),
                  "val_loss": float(trainer.callback_metrics["val/loss"])}
        torch.save(result, out / "result.pt")


if __name__ == "__main__":
    main()
