"""Python function calls per training step: hand-written loop vs dltrain (case 1 of scripts/bench).

Counts, unlike timings, do not depend on what else runs on the machine, so they show whether dltrain adds Python
work per step. The dltrain count includes its per-fit set-up and checkpoint, spread over the steps.

    .venv/bin/python scripts/calls_per_step.py [--steps 400]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import tempfile
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import core

CFG = core.FULL["loop"]


def _loader(steps: int) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(steps * 64, CFG["in_dim"], generator=g)
    y = torch.randint(0, CFG["classes"], (steps * 64,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True)


def hand(steps: int) -> None:
    model = core.make_model("mlp", CFG)
    opt = core.make_optimizer("mlp", model.parameters())
    lossf = core.loss_fn("mlp")
    for i, (x, y) in enumerate(_loader(steps)):
        loss = lossf(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if (i + 1) % 50 == 0:
            loss.item()


def dltrain_fit(steps: int) -> None:
    import dltrain

    task = core.dl_task_cls()("mlp", CFG)
    with tempfile.TemporaryDirectory() as root:
        dltrain.Trainer(max_epochs=1, default_root_dir=root, enable_progress_bar=True).fit(task, _loader(steps))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=400)
    args = p.parse_args()
    torch.set_num_threads(1)
    for name, fn in (("hand", hand), ("dltrain", dltrain_fit)):
        fn(args.steps)  # warm-up: imports and first-call caches
        prof = cProfile.Profile()
        prof.enable()
        fn(args.steps)
        prof.disable()
        print(f"{name}: {pstats.Stats(prof).total_calls / args.steps:.1f} Python calls per step")


if __name__ == "__main__":
    main()
