"""Python function calls per training step: hand-written loop vs dltrain (case 1 of scripts/bench).

Counts, unlike timings, do not depend on what else runs on the machine, so they show whether dltrain adds Python
work per step. Each variant runs ``--steps`` and twice as many steps (one epoch each, after a warm-up run): the
difference divided by ``--steps`` is the cost of one more step, and what is left is the per-fit cost (set-up,
final checkpoint). ``--top`` lists the functions that one more step calls most often.

    .venv/bin/python scripts/calls_per_step.py [--steps 200] [--top 0]
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


def _profile(variant: str, steps: int) -> pstats.Stats:
    """The cProfile of one run of the bench's own case-1 loop (`LoopRunner`), after a warm-up run."""
    cfg = {**core.FULL["loop"], "steps": steps}
    with tempfile.TemporaryDirectory() as tmp:
        runner = core.LoopRunner(variant, "mlp", cfg, tmp)
        runner.run(0, {})  # warm-up: imports and first-call caches
        prof = cProfile.Profile()
        prof.enable()
        runner.run(1, {})
        prof.disable()
    return pstats.Stats(prof)


def main() -> None:
    """Print both variants' calls per step and per fit."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--top", type=int, default=0, help="list the N functions one more step calls most often")
    args = p.parse_args()
    torch.set_num_threads(1)
    n = args.steps
    for variant in ("hand", "dltrain"):
        short, long = _profile(variant, n), _profile(variant, 2 * n)
        per_step = (long.total_calls - short.total_calls) / n  # type: ignore[attr-defined]
        per_fit = short.total_calls - n * per_step  # type: ignore[attr-defined]
        print(f"{variant}: {per_step:.1f} Python calls per step, {per_fit:,.0f} per fit "
              f"({short.total_calls / n:.1f} per step over {n} steps, the per-fit calls included)")  # type: ignore[attr-defined]
        if args.top:
            more = {k: (v[1] - short.stats.get(k, (0, 0))[1]) / n for k, v in long.stats.items()}  # type: ignore[attr-defined]
            for (file, line, name), calls in sorted(more.items(), key=lambda kv: -kv[1])[:args.top]:
                print(f"    {calls:7.2f}  {Path(file).name}:{line}:{name}")


if __name__ == "__main__":
    main()
