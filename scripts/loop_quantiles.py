"""Case 1 of scripts/bench (tiny MLP, CPU, one thread), hand loop and dltrain variants interleaved in one process.

Prints, per variant, the median over rounds of the median step and of the 10th-percentile step (CPU time), each
as a ratio to the hand loop of the same round. On this 2-core VM the median step of one run moved between 0.55x
and 1.8x of its round's hand loop (other guests); the 10th percentile moved a few percent. The variants switch
off the default callbacks one by one, to see where dltrain's per-step time goes.

    .venv/bin/python scripts/loop_quantiles.py [--rounds 15] [--steps 400]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import core
from benchlib.common import _CLASSES, _CPU, _PERF, _times, dl_task_cls

VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "no bar": {"enable_progress_bar": False},
    "bare": {"enable_progress_bar": False, "logger": False, "enable_checkpointing": False,
             "enable_model_summary": False},
}


def main() -> None:
    """Run the rounds and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--steps", type=int, default=400)
    args = parser.parse_args()
    torch.set_num_threads(1)
    import dltrain

    cfg = {**core.FULL["loop"], "steps": args.steps}
    tmp = tempfile.mkdtemp(prefix="loop-quantiles-")
    runner = core.LoopRunner("hand", "mlp", cfg, tmp)

    def dltrain_run(kwargs: dict[str, Any]) -> Callable[[str], dict[str, Any]]:
        def run(root: str) -> dict[str, Any]:
            task = dl_task_cls()("mlp", cfg)
            timer = _CLASSES["dl_timer"]()
            trainer = dltrain.Trainer(max_epochs=1, accelerator="cpu", devices=1, default_root_dir=root,
                                      callbacks=[timer], **kwargs)
            loader = runner.loader()
            gc.collect()
            c0, t0 = _CPU(), _PERF()
            trainer.fit(task, loader)
            t1, c1 = _PERF(), _CPU()
            return _times(t0, c0, t1, c1, timer.first, timer.ends, timer.n)

        return run

    runs: dict[str, Callable[[str], dict[str, Any]]] = {"hand": runner._hand}
    runs.update({name: dltrain_run(kwargs) for name, kwargs in VARIANTS.items()})
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in runs}
    for run in runs.values():  # warm-up: imports and first-call caches
        run(tempfile.mkdtemp(dir=tmp))
    for _ in range(args.rounds):
        for name, run in runs.items():
            results[name].append(run(tempfile.mkdtemp(dir=tmp)))
    print(f"{args.rounds} rounds of {args.steps} steps; ratios to the hand loop of the same round, median (range)")
    for key, label in (("c_step_med", "median step"), ("c_step_p10", "10th-percentile step")):
        for name, rows in results.items():
            ratios = [r[key] / h[key] for r, h in zip(rows, results["hand"])]
            step = 1e6 * statistics.median(r[key] for r in rows)
            print(f"{label:21s} {name:8s} {step:7.1f} µs  {statistics.median(ratios):.3f} "
                  f"({min(ratios):.3f}-{max(ratios):.3f})")


if __name__ == "__main__":
    main()
