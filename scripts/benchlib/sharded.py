"""Checkpoint save time, size and peak memory: strategy="fsdp2" vs "ddp" on 2 CPU processes (issue 15).

Run it (each strategy is its own torchrun launch; the numbers are printed as a Markdown table)::

    PYTHONPATH=scripts:src .venv/bin/python -m benchlib.sharded --params 100 --saves 3

A stack of square Linear layers with about ``--params`` million float32 parameters and SGD with momentum (so the
optimizer state is as large as the model), one training step (so that the momentum exists), then ``--saves``
calls of ``trainer.save_checkpoint`` (rank 0's wall time from a barrier before to the barrier dltrain ends with),
the size on disk, and every rank's peak resident memory (``ru_maxrss``) over the whole process.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WIDTH = 4096


def _worker(args: argparse.Namespace) -> None:
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    import dltrain

    torch.set_num_threads(1)
    layers = max(round(args.params * 1e6 / (WIDTH * WIDTH + WIDTH)), 1)

    class Stack(dltrain.Task):
        def __init__(self) -> None:
            super().__init__()
            self.blocks = torch.nn.ModuleList(torch.nn.Linear(WIDTH, WIDTH) for _ in range(layers))

        def training_step(self, batch, batch_idx):
            x = batch[0]
            for block in self.blocks:
                x = torch.tanh(block(x))
            return x.pow(2).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=1e-3, momentum=0.9)

    trainer = dltrain.Trainer(accelerator="cpu", strategy=args.strategy, max_steps=1, logger=False,
                              enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    task = Stack()
    n_params = sum(p.numel() for p in task.parameters())
    data = DataLoader(TensorDataset(torch.randn(2 * trainer.world_size, WIDTH)), batch_size=2)
    trainer.fit(task, data)
    times = []
    for i in range(args.saves):
        path = Path(args.out) / f"save-{i}.ckpt"
        trainer.fabric.barrier()
        start = time.perf_counter()
        trainer.save_checkpoint(path)  # ends with a barrier: every rank's part is written
        times.append(time.perf_counter() - start)
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    peaks = trainer.fabric.all_gather(torch.tensor([peak_mb])).flatten().tolist()
    if trainer.is_global_zero:
        print("RESULT " + json.dumps({"strategy": args.strategy, "params": n_params, "save_s": times,
                                      "size_mb": size / 2**20, "peak_rss_mb": peaks}), flush=True)


def _launch(strategy: str, args: argparse.Namespace, out: str) -> dict:
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(root / "scripts"), str(root / "src"), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
           "benchlib.sharded", "--worker", "--strategy", strategy, "--params", str(args.params),
           "--saves", str(args.saves), "--out", out]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    lines = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"{strategy} run failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return json.loads(lines[0][len("RESULT "):])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--params", type=float, default=100, help="millions of parameters (about)")
    p.add_argument("--saves", type=int, default=3)
    p.add_argument("--strategies", default="ddp,fsdp2")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--strategy", default="ddp", help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        _worker(args)
        return
    rows = []
    for strategy in args.strategies.split(","):
        out = tempfile.mkdtemp(prefix=f"bench-sharded-{strategy}-")
        try:
            rows.append(_launch(strategy, args, out))
        finally:
            shutil.rmtree(out, ignore_errors=True)
    print("| strategy | parameters | save time, s (each save) | checkpoint on disk, MB | peak RSS per rank, MB |")
    print("|---|---|---|---|---|")
    for r in rows:
        saves = ", ".join(f"{t:.2f}" for t in r["save_s"])
        peaks = " / ".join(f"{m:,.0f}" for m in r["peak_rss_mb"])
        print(f"| {r['strategy']} | {r['params'] / 1e6:.1f} M | {saves} | {r['size_mb']:,.0f} | {peaks} |")


if __name__ == "__main__":
    main()
