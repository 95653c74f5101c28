"""Manual optimization under DDP (run with torchrun, 2 processes): manual_backward must sync gradients.

Each rank sees different samples; if gradients were not all-reduced the replicas would drift apart.
"""

from __future__ import annotations

import torch

import dltrain
from tests.core.test_lightning_surface import Gan, gan_data


def main() -> None:
    torch.set_num_threads(1)
    trainer = dltrain.Trainer(accelerator="cpu", strategy="ddp_find_unused_parameters_true", max_epochs=2,
                              logger=False, enable_progress_bar=False, enable_checkpointing=False,
                              enable_model_summary=False)
    torch.manual_seed(0)
    gan = Gan()
    trainer.fit(gan, gan_data())
    weights = torch.cat([p.detach().flatten() for p in gan.parameters()])
    gathered = trainer.fabric.all_gather(weights)
    assert torch.equal(gathered[0], gathered[1]), "replicas drifted apart: manual_backward did not sync gradients"
    # 48 samples, 8 per batch per rank: 3 batches per rank per epoch, two optimizer steps each.
    assert trainer.global_step == 2 * 3 * 2, trainer.global_step
    print(f"DLTRAIN-TEST-COMPLETED rank {trainer.global_rank}", flush=True)


if __name__ == "__main__":
    main()
