"""What torch's compile cache saves a restarted job: ``Trainer(compile=True)`` with inductor, cold and warm (issue 17).

Run it (every start is a fresh process; the numbers are printed as a Markdown table)::

    PYTHONPATH=scripts:src .venv/bin/python -m benchlib.compile_start --starts 3

A small decoder-only transformer (``--layers`` blocks of width ``--width``, causal self-attention and an MLP) trains
``--steps`` steps with ``Trainer(compile=True)`` (inductor, the default backend) and once without compiling. Each
start is a new process; the first compiled start gets an empty ``TORCHINDUCTOR_CACHE_DIR``, the later ones the
same directory, as a job restarted on the same node (or with the cache on shared storage) would. Reported per
start: the compile time dltrain prints (``Compile.compile_seconds``: dynamo's compile events, forward and backward
graphs), the first training batch's wall time, the median step after it, the whole ``fit`` and the process's
wall time, and the final loss (equal across compiled starts: the cache changes nothing but the time).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

_START = time.perf_counter()


def _worker(args: argparse.Namespace) -> None:
    import torch
    from torch import nn
    from torch.nn import functional as F
    from torch.utils.data import DataLoader, TensorDataset

    import dltrain
    from dltrain.callbacks import Compile

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    width, vocab, context = args.width, 256, 64

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
            self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
            self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b, t, _ = x.shape
            q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, 4, width // 4).unbind(2)
            att = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                 is_causal=True)
            x = x + self.proj(att.transpose(1, 2).reshape(b, t, width))
            return x + self.mlp(self.norm2(x))

    class LM(dltrain.Task):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(vocab, width)
            self.blocks = nn.ModuleList(Block() for _ in range(args.layers))
            self.head = nn.Linear(width, vocab)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.embed(x)
            for block in self.blocks:
                h = block(h)
            return self.head(h)

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = F.cross_entropy(self(x).flatten(0, 1), y.flatten())
            self.log("loss", loss)
            return loss

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=1e-3)

    class Times(dltrain.Callback):
        def __init__(self) -> None:
            self.ends: list[float] = []
            self.start = 0.0

        def on_train_start(self, trainer, task):
            self.start = time.perf_counter()

        def on_train_batch_end(self, trainer, task, outputs, batch, batch_idx):
            self.ends.append(time.perf_counter())

    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, vocab, (args.steps * args.batch, context + 1), generator=g)
    data = DataLoader(TensorDataset(tokens[:, :-1], tokens[:, 1:]), batch_size=args.batch)
    torch.manual_seed(0)
    task, times = LM(), Times()
    trainer = dltrain.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_progress_bar=False,
                              enable_checkpointing=False, enable_model_summary=False, callbacks=[times],
                              compile=args.compiled, default_root_dir=tempfile.mkdtemp())
    fit_start = time.perf_counter()
    trainer.fit(task, data)
    fit_end = time.perf_counter()
    compiler = next((cb for cb in trainer.callbacks if isinstance(cb, Compile)), None)
    steps = [b - a for a, b in zip(times.ends, times.ends[1:])]
    print(json.dumps({
        "compile_s": compiler.compile_seconds if compiler is not None else 0.0,
        "recompiles": compiler.recompiles if compiler is not None else 0,
        "steps_ms": [round(x * 1e3, 1) for x in steps],
        "first_batch_s": times.ends[0] - times.start,
        "median_step_ms": statistics.median(steps) * 1e3,
        "fit_s": fit_end - fit_start,
        "process_s": time.perf_counter() - _START,
        "loss": float(trainer.callback_metrics["loss"]),
    }))


def _start(args: argparse.Namespace, cache: str, compiled: bool) -> dict:
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache, "OMP_NUM_THREADS": str(args.threads)}
    cmd = [sys.executable, "-m", "benchlib.compile_start", "--worker", "--steps", str(args.steps), "--batch",
           str(args.batch), "--layers", str(args.layers), "--width", str(args.width)]
    if compiled:
        cmd.append("--compiled")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"start failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["launch_s"] = wall
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--compiled", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--starts", type=int, default=3, help="compiled starts: 1 cold, the rest warm")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    if args.worker:
        _worker(args)
        return
    with tempfile.TemporaryDirectory(prefix="inductor-cache-") as cache:
        rows = [("eager (no compile)", _start(args, cache, compiled=False))]
        for i in range(args.starts):
            rows.append(("compiled, cold cache" if i == 0 else f"compiled, warm cache (start {i + 1})",
                         _start(args, cache, compiled=True)))
    print(f"{args.layers} blocks of width {args.width}, batch {args.batch} x 64 tokens, {args.steps} steps, "
          f"{args.threads} thread(s), load average {' '.join(f'{x:.1f}' for x in os.getloadavg())} at the end\n")
    print("| start | compile time dltrain reports (s) | recompiles | first batch (s) | median step after it (ms) "
          "| fit (s) | process (s) | final loss |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in rows:
        print(f"| {name} | {r['compile_s']:.1f} | {r['recompiles']} | {r['first_batch_s']:.1f} | "
              f"{r['median_step_ms']:.1f} | {r['fit_s']:.1f} | {r['launch_s']:.1f} | {r['loss']:.6f} |")


if __name__ == "__main__":
    main()
