"""Case 9 of scripts/bench (``benchlib.fault_tolerance``, issue 24) runs end to end at a small setting.

Not a measurement (the figures of a loaded test machine mean nothing): the same launches as the benchmark (DDP on 2
processes, 2 replica groups x 1 process with a lighthouse, then a run where group 1 dies), 12 steps of a width-16
MLP, so that a change to the FaultTolerant strategy or the bench's launcher does not reach a benchmark run first.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
os.environ.setdefault("RUST_LOG", "warn")  # before torchft is imported: its in-process lighthouse logs every tick


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_ft_bench_runs_at_a_small_setting():
    pytest.importorskip("torchft")
    from benchlib import fault_tolerance

    steps, kill_step = 12, 6
    res = fault_tolerance.measure(steps=steps, warmup=2, batch=8, width=16, repeats=1, kill_step=kill_step,
                                  heartbeat_timeout=2.0)
    assert len(res["step_s"]["ddp"]) == len(res["step_s"]["ft"]) == 1, res
    assert all(s > 0 for mode in ("ddp", "ft") for s in res["step_s"][mode]), res
    kill = res["kill"]
    # Group 0 trained every step, alone after group 1 died, and stood still a while when it did.
    assert kill["steps_done"] == steps and kill["stall_s"] > 0 and kill["uncommitted"] >= 0, kill
    lines, ratio = fault_tolerance.report(res)
    assert ratio > 0 and any(line.startswith("ft / ddp median step:") for line in lines), lines
    assert f"group 1 SIGKILLed after step {kill_step}" in "\n".join(lines)
