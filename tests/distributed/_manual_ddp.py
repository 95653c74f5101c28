"""Manual optimization under DDP (run with torchrun, 2 processes): manual_backward must sync gradients.

Each rank sees different samples; if gradients were not all-reduced the replicas would drift apart. Then
``Task.all_gather`` on 2 ranks with every warning an error (Fabric's went through a deprecated torch function, a
FutureWarning per rank): values, collections and numbers, and gradients with ``sync_grads`` equal to those of
torch's own differentiable gather (what Lightning uses).
"""

from __future__ import annotations

import warnings

import torch

import dltrain
from tests.core.test_lightning_surface import Gan, gan_data


def _losses(gathered: torch.Tensor, rank: int) -> torch.Tensor:
    """A loss of every rank's rows that differs per rank, so each input's gradient sums two different terms."""
    weights = torch.arange(gathered.numel(), dtype=gathered.dtype).reshape(gathered.shape) + 10 * rank
    return (gathered * weights).sum() + gathered[rank].pow(2).sum()


def check_all_gather(task: dltrain.Task, rank: int) -> None:
    base = torch.arange(6, dtype=torch.float32).reshape(3, 2) + rank
    out = task.all_gather({"x": base.t(), "n": rank + 1, "rows": [base[0]]})  # a non-contiguous tensor too
    assert torch.equal(out["x"], torch.stack([(torch.arange(6.0).reshape(3, 2) + r).t() for r in (0, 1)]))
    assert torch.equal(out["n"], torch.tensor([1, 2])) and out["rows"][0].shape == (2, 2)
    assert out["x"].grad_fn is None

    ours = base.clone().requires_grad_(True)
    gathered = task.all_gather(ours * 1.0, sync_grads=True)
    assert gathered.shape == (2, 3, 2) and gathered.requires_grad
    _losses(gathered, rank).backward()
    theirs = base.clone().requires_grad_(True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # the deprecated reference itself
        from torch.distributed.nn.functional import all_gather

        reference = torch.stack(all_gather(theirs * 1.0))
    _losses(reference, rank).backward()
    assert torch.equal(gathered.detach(), reference.detach())
    assert ours.grad is not None and theirs.grad is not None
    assert torch.equal(ours.grad, theirs.grad), (ours.grad, theirs.grad)
    # By hand: rank r's input gets, from each rank k, the weights k gives row r, plus 2x from its own rank.
    expected = sum(torch.arange(12.0).reshape(2, 3, 2)[rank] + 10 * k for k in (0, 1)) + 2 * base
    assert torch.equal(ours.grad, expected), (ours.grad, expected)
    # sync_grads=False: no gradient flows to the input.
    assert not task.all_gather(ours * 1.0).requires_grad


def main() -> None:
    torch.set_num_threads(1)
    trainer = dltrain.Trainer(accelerator="cpu", strategy="ddp_find_unused_parameters_true", max_epochs=2,
                              logger=False, enable_progress_bar=False, enable_checkpointing=False,
                              enable_model_summary=False)
    torch.manual_seed(0)
    gan = Gan()
    trainer.fit(gan, gan_data())
    weights = torch.cat([p.detach().flatten() for p in gan.parameters()])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gathered = gan.all_gather(weights)
        assert torch.equal(gathered[0], gathered[1]), "replicas drifted apart: manual_backward did not sync gradients"
        check_all_gather(gan, trainer.global_rank)
    # 48 samples, 8 per batch per rank: 3 batches per rank per epoch, two optimizer steps each.
    assert trainer.global_step == 2 * 3 * 2, trainer.global_step
    print(f"DLTRAIN-TEST-COMPLETED rank {trainer.global_rank}", flush=True)


if __name__ == "__main__":
    main()
