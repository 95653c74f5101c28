"""The Trainer and a hand-written PyTorch loop reach bitwise-identical weights on CPU."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from tests.helpers.tasks import TinyTask, loader, make_model, make_scheduler, quiet_trainer

EPOCHS = 3


def hand_written(dropout, scheduler, accumulate, clip, epochs=EPOCHS):
    torch.manual_seed(0)
    model = make_model(dropout)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    config = make_scheduler(opt, scheduler)
    sched = config["lr_scheduler"] if isinstance(config, dict) else None
    if isinstance(sched, dict):
        sched, interval = sched["scheduler"], sched["interval"]
    else:
        interval = "epoch"
    data = loader()
    torch.manual_seed(1)
    model.train()
    for _ in range(epochs):
        n = len(data)
        for i, (x, y) in enumerate(data):
            loss = F.mse_loss(model(x), y)
            (loss / accumulate if accumulate > 1 else loss).backward()
            if (i + 1) % accumulate == 0 or i == n - 1:
                if clip is not None:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
                opt.step()
                opt.zero_grad(set_to_none=True)
                if sched is not None and interval == "step":
                    sched.step()
        if sched is not None and interval == "epoch":
            sched.step()
    return model


def with_trainer(tmp_path, dropout, scheduler, accumulate, clip, val_every=None):
    torch.manual_seed(0)
    task = TinyTask(dropout=dropout, scheduler=scheduler)
    trainer = quiet_trainer(
        tmp_path,
        max_epochs=EPOCHS,
        accumulate_grad_batches=accumulate,
        gradient_clip_val=clip,
        val_check_interval=val_every,
        log_every_n_steps=2,
    )
    torch.manual_seed(1)
    trainer.fit(task, loader(), loader(n=40, batch_size=16) if val_every else None)
    return task.model, trainer


@pytest.mark.parametrize(
    ("dropout", "scheduler", "accumulate", "clip", "val_every"),
    [
        (0.0, None, 1, None, None),
        (0.3, None, 1, None, None),
        (0.0, "step", 1, None, None),
        (0.0, "epoch", 1, None, None),
        (0.0, None, 4, None, None),
        (0.0, None, 1, 0.05, None),
        (0.3, "step", 1, None, 5),  # validation every 5 batches must not perturb the training RNG stream
    ],
    ids=["plain", "dropout", "sched-step", "sched-epoch", "accumulate4", "clip", "dropout-val-every-5"],
)
def test_bitwise_parity_with_hand_written_loop(tmp_path, dropout, scheduler, accumulate, clip, val_every):
    reference = hand_written(dropout, scheduler, accumulate, clip)
    model, trainer = with_trainer(tmp_path, dropout, scheduler, accumulate, clip, val_every)
    for (name, a), b in zip(reference.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), f"{name} differs (max abs diff {(a - b).abs().max().item():.3g})"
    steps_per_epoch = -(-12 // accumulate)
    assert trainer.global_step == EPOCHS * steps_per_epoch
    if val_every:
        assert "val/loss" in trainer.callback_metrics


def test_clip_by_value_matches_torch(tmp_path):
    torch.manual_seed(0)
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    torch.manual_seed(1)
    for x, y in loader():
        F.mse_loss(model(x), y).backward()
        torch.nn.utils.clip_grad_value_(model.parameters(), 0.01)
        opt.step()
        opt.zero_grad(set_to_none=True)
    torch.manual_seed(0)
    task = TinyTask()
    trainer = quiet_trainer(tmp_path, max_epochs=1, gradient_clip_val=0.01, gradient_clip_algorithm="value")
    torch.manual_seed(1)
    trainer.fit(task, loader())
    for a, b in zip(model.state_dict().values(), task.model.state_dict().values()):
        assert torch.equal(a, b)
