"""Manual optimization (two optimizers, two backward passes, clip_gradients on one) under a chosen strategy:
``python _manual_sharded.py STRATEGY OUT``; rank 0 writes the final weights, gathered whole, to OUT/final.pt."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.utils.data import DataLoader

import dltrain
from tests.helpers.tasks import make_data


class TwoPlayers(dltrain.Task):
    """A generator/critic pair on the regression data: each step trains the critic (clipped), then the generator."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.g = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
        self.d = torch.nn.Sequential(torch.nn.Linear(9, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        opt_g, opt_d = self.optimizers()
        fake = torch.cat([x, self.g(x).detach()], 1)
        loss_d = (self.d(fake) - 1).pow(2).mean() + self.d(torch.cat([x, y], 1)).pow(2).mean()
        opt_d.zero_grad()
        self.manual_backward(loss_d)
        self.clip_gradients(opt_d, gradient_clip_val=0.5)
        opt_d.step()
        pred = self.g(x)
        loss_g = self.d(torch.cat([x, pred], 1)).pow(2).mean() + (pred - y).pow(2).mean()
        opt_g.zero_grad()
        self.manual_backward(loss_g)
        opt_g.step()
        self.log("loss_g", loss_g)

    def configure_optimizers(self):
        return torch.optim.SGD(self.g.parameters(), lr=0.05), torch.optim.SGD(self.d.parameters(), lr=0.05)


def main() -> None:
    strategy, out = sys.argv[1], Path(sys.argv[2])
    torch.set_num_threads(1)
    trainer = dltrain.Trainer(accelerator="cpu", strategy=strategy, max_epochs=2, logger=False,
                              enable_progress_bar=False, enable_checkpointing=False, seed=3)
    torch.manual_seed(0)
    task = TwoPlayers()
    trainer.fit(task, DataLoader(make_data(64), batch_size=32 // trainer.world_size))
    state = get_model_state_dict(task, options=StateDictOptions(full_state_dict=True))  # a collective
    if trainer.is_global_zero:
        out.mkdir(parents=True, exist_ok=True)
        torch.save({k: v.clone() for k, v in state.items()}, out / "final.pt")
    print(f"DLTRAIN-TEST-COMPLETED rank {trainer.global_rank} step {trainer.global_step}", flush=True)


if __name__ == "__main__":
    main()
