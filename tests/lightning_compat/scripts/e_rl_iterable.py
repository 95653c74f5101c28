"""RL-style training: an IterableDataset that plays episodes with the current policy, using self.global_step."""
import json

import torch
from lightning.pytorch import LightningModule, Trainer, seed_everything
from torch.utils.data import DataLoader, IterableDataset


class Episodes(IterableDataset):
    def __init__(self, agent, steps: int = 16):
        self.agent, self.steps = agent, steps

    def __iter__(self):
        g = torch.Generator().manual_seed(100 + self.agent.global_step)
        for _ in range(self.steps):
            state = torch.randn(4, generator=g)
            reward = torch.tensor(1.0 if state[0] > 0 else -1.0)
            yield state, reward


class Agent(LightningModule):
    def __init__(self):
        super().__init__()
        self.policy = torch.nn.Linear(4, 2)
        self.epsilon_log = []

    def training_step(self, batch, batch_idx):
        states, rewards = batch
        epsilon = max(0.05, 1.0 - self.global_step / 20)
        self.epsilon_log.append(round(epsilon, 6))
        logp = torch.log_softmax(self.policy(states), dim=1)[:, 0]
        loss = -(logp * rewards).mean()
        self.log("loss", loss)
        return loss

    def train_dataloader(self):
        return DataLoader(Episodes(self), batch_size=4)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.01)


seed_everything(7)
agent = Agent()
trainer = Trainer(accelerator="cpu", devices=1, max_steps=24, logger=False, enable_progress_bar=False,
                  enable_checkpointing=False, enable_model_summary=False)
trainer.fit(agent)
print(json.dumps({"loss": float(trainer.callback_metrics["loss"]), "global_step": trainer.global_step,
                  "epsilons": agent.epsilon_log}))
