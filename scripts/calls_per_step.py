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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import core


def _count(variant: str, steps: int) -> float:
    """Python calls per step of one run of the bench's own case-1 loop (`LoopRunner`), after a warm-up run."""
    cfg = {**core.FULL["loop"], "steps": steps}
    with tempfile.TemporaryDirectory() as tmp:
        runner = core.LoopRunner(variant, "mlp", cfg, tmp)
        runner.run(0, {})  # warm-up: imports and first-call caches
        prof = cProfile.Profile()
        prof.enable()
        runner.run(1, {})
        prof.disable()
    return pstats.Stats(prof).total_calls / steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=400)
    args = p.parse_args()
    torch.set_num_threads(1)
    for variant in ("hand", "dltrain"):
        print(f"{variant}: {_count(variant, args.steps):.1f} Python calls per step")


if __name__ == "__main__":
    main()
