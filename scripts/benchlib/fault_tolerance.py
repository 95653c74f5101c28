"""Replica groups (``strategy=dltrain.FaultTolerant``, torchft) against plain DDP on the CPU (issue 24).

Case ``ft`` of ``scripts/bench`` (``scripts/bench --cases ft``); alone, it prints its Markdown table::

    PYTHONPATH=scripts:src .venv/bin/python -m benchlib.fault_tolerance --repeats 3

Three kinds of runs of the same training (an MLP, ``--width``, batch ``--batch`` per process, in-memory data):

- ``ddp``: one ``torchrun --nproc_per_node=2``, DDP over gloo;
- ``ft``: two replica groups of one process each (two torchruns, ``REPLICA_GROUP_ID=0,1``) and a lighthouse in
  this process: the same total batch; per step a quorum, the gradient all-reduce over torchft's managed gloo
  group and the commit vote;
- ``ft-kill``: as ``ft``, group 1 SIGKILLs itself after step ``--kill-step`` (no restart): how long group 0 made
  no progress (the gap between its last step before the kill and its next committed step, minus one median step)
  and how many of its steps were not committed.

Reported: the median step time of each run (steps after ``--warmup``; group 0's for ft), ddp and ft interleaved
``--repeats`` times, their ratio (goal: ft within 10 % of ddp), the time lost per failure in seconds and in steps,
and the load average before and after (the machine is shared: a ratio measured under load is noisy).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()


def _worker(args: argparse.Namespace) -> None:
    import signal

    import torch
    from torch import nn
    from torch.nn import functional as F
    from torch.utils.data import DataLoader, TensorDataset

    import dltrain

    torch.set_num_threads(1)
    dltrain.seed_everything(0)
    group = int(os.environ.get("REPLICA_GROUP_ID", "0"))
    rank = int(os.environ.get("RANK", "0"))
    times: list[float] = []

    class Timer(dltrain.Callback):
        def on_train_batch_end(self, trainer, task, outputs, batch, batch_idx):
            times.append(time.perf_counter())
            if args.kill_step and group == 1 and trainer.global_step == args.kill_step:
                os.kill(os.getpid(), signal.SIGKILL)

    class MLP(dltrain.Task):
        def __init__(self) -> None:
            super().__init__()
            w = args.width
            self.net = nn.Sequential(nn.Linear(64, w), nn.ReLU(), nn.Linear(w, w), nn.ReLU(), nn.Linear(w, 10))

        def training_step(self, batch, batch_idx):
            x, y = batch
            return F.cross_entropy(self.net(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01, momentum=0.9)

    n = args.batch * 2 * (args.steps + 1)
    g = torch.Generator().manual_seed(1)
    data = TensorDataset(torch.randn(n, 64, generator=g), torch.randint(0, 10, (n,), generator=g))
    strategy = dltrain.FaultTolerant(min_replicas=1, timeout=60) if args.mode != "ddp" else "ddp"
    trainer = dltrain.Trainer(strategy=strategy, max_steps=args.steps, accelerator="cpu", logger=False,
                              enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                              callbacks=[Timer()], default_root_dir=args.root)
    trainer.fit(MLP(), DataLoader(data, batch_size=args.batch, shuffle=True))
    uncommitted = trainer.loop_state.uncommitted_steps
    Path(args.root, f"times-g{group}-r{rank}.json").write_text(json.dumps({"times": times,
                                                                            "uncommitted": uncommitted}))


def _launch(mode: str, args: argparse.Namespace, root: str, lighthouse: str | None) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(HERE.parents[1]), str(HERE.parents[2] / "src"), os.environ.get("PYTHONPATH", "")])}
    worker = [str(HERE), "--worker", "--mode", mode, "--root", root, "--steps", str(args.steps), "--batch",
              str(args.batch), "--width", str(args.width), "--kill-step", str(args.kill_step if mode == "ft-kill"
                                                                                  else 0)]
    run = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    if mode == "ddp":
        procs = [subprocess.Popen([*run, "--nproc_per_node=2", *worker], env=env)]
    else:
        env.update(NUM_REPLICA_GROUPS="2", TORCHFT_LIGHTHOUSE=str(lighthouse), RUST_LOG="warn")
        procs = [subprocess.Popen([*run, "--nproc_per_node=1", *worker], env={**env, "REPLICA_GROUP_ID": str(g)},
                                  stdout=subprocess.DEVNULL if mode == "ft-kill" and g == 1 else None,
                                  stderr=subprocess.DEVNULL if mode == "ft-kill" and g == 1 else None)
                 for g in (0, 1)]
    for p in procs:
        p.wait(timeout=1800)
    if mode != "ft-kill" and any(p.returncode for p in procs):
        raise SystemExit(f"{mode} run failed")


def _median_step(times: list[float], warmup: int) -> float:
    return statistics.median(b - a for a, b in zip(times[warmup:], times[warmup + 1:]))


def measure(steps: int = 200, warmup: int = 20, batch: int = 64, width: int = 1024, repeats: int = 3,
            kill_step: int = 100, heartbeat_timeout: float = 5.0) -> dict[str, Any]:
    """Run ddp and ft interleaved ``repeats`` times (fresh processes each), then one ft-kill run.

    Returns:
        The raw figures (seconds), for `report`.
    """
    os.environ.setdefault("RUST_LOG", "warn")
    sys.path.insert(0, str(HERE.parents[2] / "src"))
    from dltrain.lighthouse import Lighthouse

    args = argparse.Namespace(steps=steps, warmup=warmup, batch=batch, width=width, kill_step=kill_step)
    load_before = os.getloadavg()[0]
    step_s: dict[str, list[float]] = {"ddp": [], "ft": []}
    with Lighthouse(min_replicas=1, heartbeat_timeout=heartbeat_timeout, join_timeout=10) as lighthouse:
        for rep in range(repeats):
            for mode in (("ddp", "ft") if rep % 2 == 0 else ("ft", "ddp")):
                with tempfile.TemporaryDirectory() as root:
                    _launch(mode, args, root, lighthouse.address)
                    times = json.loads(Path(root, "times-g0-r0.json").read_text())["times"]
                    step_s[mode].append(_median_step(times, warmup))
        with tempfile.TemporaryDirectory() as root:
            _launch("ft-kill", args, root, lighthouse.address)
            out = json.loads(Path(root, "times-g0-r0.json").read_text())
    times, step = out["times"], _median_step(out["times"], warmup)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    stall = max(gaps[kill_step - 1:]) - step
    return {"steps": steps, "warmup": warmup, "batch": batch, "width": width, "kill_step": kill_step,
            "heartbeat_timeout": heartbeat_timeout, "step_s": step_s, "kill": {
                "stall_s": stall, "stall_steps": stall / step, "uncommitted": int(out["uncommitted"]),
                "steps_done": len(times)}, "load": [load_before, os.getloadavg()[0]]}


def report(res: dict[str, Any], target: float = 1.10) -> tuple[list[str], float]:
    """The Markdown lines of a `measure` result and its ft / ddp ratio of median step times."""
    steps = res["step_s"]
    ddp, ft = statistics.median(steps["ddp"]), statistics.median(steps["ft"])
    kill = res["kill"]
    lines = [f"{res['steps']} steps, batch {res['batch']} per process, MLP width {res['width']}, in-memory data; "
             f"fresh processes per run, ddp and ft alternated; median step after {res['warmup']} warm-up steps "
             f"(rank 0 of group 0 for ft); load average {res['load'][0]:.1f} before, {res['load'][1]:.1f} after.",
             "", "| run | median step (ms), per repeat | median (ms) |", "| --- | --- | --- |"]
    for mode, label in (("ddp", "DDP, 2 processes (one torchrun)"),
                        ("ft", "FaultTolerant, 2 replica groups x 1 process (two torchruns + lighthouse)")):
        lines.append(f"| {label} | {', '.join(f'{1000 * s:.1f}' for s in steps[mode])} | "
                     f"{1000 * statistics.median(steps[mode]):.1f} |")
    lines += ["", f"ft / ddp median step: {ft / ddp:.3f} (goal <= {target:.2f})", "",
              f"One failure (group 1 SIGKILLed after step {res['kill_step']}, not restarted; lighthouse heartbeat "
              f"timeout {res['heartbeat_timeout']:.0f} s): group 0 made no progress for {kill['stall_s']:.2f} s = "
              f"{kill['stall_steps']:.0f} of its median steps, {kill['uncommitted']} step(s) not committed, and "
              f"trained on alone to step {kill['steps_done']}."]
    return lines, ft / ddp


def main() -> None:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="ddp", help=argparse.SUPPRESS)
    parser.add_argument("--root", default="", help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--kill-step", type=int, default=100)
    parser.add_argument("--heartbeat-timeout", type=float, default=5.0,
                        help="the lighthouse's (seconds): how long it waits before dropping a silent group")
    parser.add_argument("--json", default=None, help="also write the raw figures to this file (scripts/bench)")
    args = parser.parse_args()
    if args.worker:
        _worker(args)
        return
    res = measure(args.steps, args.warmup, args.batch, args.width, args.repeats, args.kill_step,
                  args.heartbeat_timeout)
    if args.json:
        Path(args.json).write_text(json.dumps(res))
    print("\n".join(report(res)[0]))


if __name__ == "__main__":
    main()
