"""The dltrain benchmark harness behind ``scripts/bench`` (issue 8): the entry point.

Run it through ``scripts/bench`` (see ``scripts/bench --help``). Three roles, one module each:

* the **parent** (``benchlib.orchestration``): prepares data, starts one worker process per variant, sends them
  runs in interleaved order (A, B, C, A, B, C, ... with the order rotated every repeat), collects the numbers,
  takes medians of paired ratios and writes the report (``benchlib.render``);
* a **worker** (``--serve``, ``benchlib.worker``): imports its stack once, then executes runs on request (one JSON
  line per run on a private pipe); every repeat of a variant runs in that same process, so import and first-use
  costs are paid once, before the measured repeats, and the process's RSS high-water mark belongs to that variant
  alone. The runners live in ``benchlib.runners`` (training loops) and ``benchlib.datacase`` (data loaders);
* a **DDP worker** (``--ddp``, started by ``torchrun``): runs the hand-written DDP loop and dltrain alternately.

The parent imports neither torch nor dltrain, so it costs nothing while the workers measure. The names below are
re-exported for the modules and scripts that imported them from here before the split.
"""

from __future__ import annotations

import sys

from benchlib.common import (
    _CLASSES,
    _CPU,
    _PERF,
    _times,
    dl_task_cls,
    loss_fn,
    make_dl_trainer,
    make_model,
    make_optimizer,
    pl_classes,
)
from benchlib.config import CPU_CASES, CUDA_CASES, FULL, QUICK, TARGETS
from benchlib.datacase import DataRunner, decode_png, stream_pair
from benchlib.orchestration import Bench, main
from benchlib.runners import CudaRunner, LoopRunner, PluginRunner, ResumeRunner, tiny_pair

__all__ = [
    "CPU_CASES", "CUDA_CASES", "FULL", "QUICK", "TARGETS", "_CLASSES", "_CPU", "_PERF", "Bench", "CudaRunner",
    "DataRunner", "LoopRunner", "PluginRunner", "ResumeRunner", "_times", "decode_png", "dl_task_cls", "loss_fn",
    "main", "make_dl_trainer", "make_model", "make_optimizer", "pl_classes", "stream_pair", "tiny_pair",
]

if __name__ == "__main__":
    sys.exit(main())
