"""Case 8 of scripts/bench: checkpoints and shards on an object store (issue 23), against local disk, in one run.

Run alone (prints the report section, writes the results as JSON)::

    PYTHONPATH=scripts:src .venv/bin/python -m benchlib.storage --json /tmp/storage.json
    scripts/bench --cases storage            # the same, as a section of the bench report

An S3 server (moto's, ``python -m moto.server``) runs in its own process on 127.0.0.1 and the standard
``AWS_*`` variables point at it, as the test suite does; nothing leaves the machine.

**Checkpoints.** A stack of square Linear layers with ~``--params`` million float32 parameters, SGD with momentum
(the optimizer state is as large as the model: a checkpoint of ~8 bytes per parameter), trained on one process
with ``ModelCheckpoint(every_n_train_steps=...)``. Four variants, one fit each, one after the other in one
process: local disk sync / async, S3 sync / async. *Blocked* is the wall time the training thread spends inside the checkpoint
callback's save (for async: waiting for the previous save if it is still in flight, copying the state off the
device, handing it to the writer thread), per save; the end-of-fit wait for the last write is reported apart.
The step time of the steps trained while a background write ran is reported too (2 cores: the writer competes
with training for them).

**Data.** The same shards (``--samples`` samples of ~3 KiB in 10 shards, with an index) on local disk and on
the S3 server; `StreamingDataset` with 0 and 2 loader workers: samples/s over one epoch (after the first batch),
time to the first batch, and time to the first batch after resuming at 90 % of an epoch (``load_state_dict``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

WIDTH = 4096
TARGET = 0.10  # issue 23: an async save blocks training for at most 10 % of a sync save


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """moto's S3 server in a process of its own (so that it does not share the training process's GIL)."""

    def __init__(self) -> None:
        port = _free_port()
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.endpoint = f"http://127.0.0.1:{port}"
        env = {"AWS_ACCESS_KEY_ID": "AKIABENCHMARK0000001", "AWS_SECRET_ACCESS_KEY": "bench-secret-0123456789", "AWS_DEFAULT_REGION":
               "us-east-1", "AWS_ENDPOINT_URL": self.endpoint, "AWS_EC2_METADATA_DISABLED": "true"}
        os.environ.update(env)
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                time.sleep(0.2)
        import boto3

        boto3.client("s3").create_bucket(Bucket="bench")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


# ---------------------------------------------------------------------- checkpoints
def checkpoints(params_m: float, saves: int, every: int, tmp: str) -> dict[str, Any]:
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    import dltrain
    from dltrain.callbacks import ModelCheckpoint

    layers = max(round(params_m * 1e6 / (WIDTH * WIDTH + WIDTH)), 1)

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
            return torch.optim.SGD(self.parameters(), lr=1e-4, momentum=0.9)

    class Timed(ModelCheckpoint):
        """Times what the training thread spends in each save, and whether a background write is running."""

        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.blocked: list[float] = []
            self.final_wait = 0.0

        def _save(self, trainer: Any, *args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            path = super()._save(trainer, *args, **kwargs)
            self.blocked.append(time.perf_counter() - start)
            return path

        def on_fit_end(self, trainer: Any, task: Any) -> None:
            start = time.perf_counter()
            super().on_fit_end(trainer, task)
            self.final_wait = time.perf_counter() - start

        def writing(self) -> bool:
            return self._async is not None and self._async.writer.in_flight

    class Steps(dltrain.Callback):
        def __init__(self, ckpt: Timed) -> None:
            self.ckpt, self.start, self.times = ckpt, 0.0, []

        def on_train_batch_start(self, trainer, task, batch, batch_idx):
            self.start, self.busy = time.perf_counter(), self.ckpt.writing()

        def on_train_batch_end(self, trainer, task, outputs, batch, batch_idx):
            # Before the checkpoint callback's hook (checkpoint callbacks run last): the step alone.
            self.times.append((time.perf_counter() - self.start, self.busy or self.ckpt.writing()))

    variants = [("local", False), ("local", True), ("s3", False), ("s3", True)]
    out: dict[str, Any] = {"params": 0, "checkpoint_bytes": 0, "variants": {}}
    torch.set_num_threads(1)
    steps = saves * every
    data = DataLoader(TensorDataset(torch.randn(2 * steps, WIDTH)), batch_size=2)
    for where, async_save in variants:
        name = f"{where}-{'async' if async_save else 'sync'}"
        folder = os.path.join(tmp, name) if where == "local" else f"s3://bench/{name}"
        # moto completes a multipart upload of hundreds of MiB in Python: on a loaded machine that takes longer
        # than botocore's 60 s read timeout, so the S3 variants wait up to 10 min (dltrain's own retries kept).
        options = None if where == "local" else {"config_kwargs": {"retries": {"total_max_attempts": 1},
                                                                   "read_timeout": 600}}
        ckpt = Timed(dirpath=folder, every_n_train_steps=every, save_top_k=1, async_save=async_save,
                     every_n_epochs=0, storage_options=options)
        timer = Steps(ckpt)
        trainer = dltrain.Trainer(accelerator="cpu", max_steps=steps, logger=False, callbacks=[timer, ckpt],
                                  enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp)
        torch.manual_seed(0)
        task = Stack()
        out["params"] = sum(p.numel() for p in task.parameters())
        try:
            trainer.fit(task, data)
        except Exception as err:  # reported, and the other variants still measured
            out["variants"][name] = {"failed": f"{type(err).__name__}: {str(err)[:300]}"}
            continue
        free = [t for t, busy in timer.times[1:] if not busy]
        busy = [t for t, b in timer.times[1:] if b]
        out["variants"][name] = {
            "blocked_s": ckpt.blocked, "final_wait_s": ckpt.final_wait,
            "step_s": statistics.median(free) if free else None,
            "step_during_write_s": statistics.median(busy) if busy else None, "steps_during_write": len(busy),
        }
        if where == "local":
            out["checkpoint_bytes"] = max(p.stat().st_size for p in Path(folder).glob("*.ckpt"))
        del trainer, task, ckpt
        import gc

        gc.collect()
        if where == "local":
            shutil.rmtree(folder, ignore_errors=True)
    return out


# ---------------------------------------------------------------------- data
def _shards(samples: int, tmp: str) -> tuple[str, str]:
    import numpy as np

    from dltrain.data import write_shards

    rng = np.random.default_rng(0)

    def gen():
        for i in range(samples):
            yield {"__key__": f"s{i:07d}", "bin": rng.bytes(3000), "cls": i % 10}

    per_shard = -(-samples // 10)
    local = write_shards(gen(), os.path.join(tmp, "shards", "train-%06d.tar"), max_count=per_shard)
    rng = np.random.default_rng(0)
    write_shards(gen(), "s3://bench/shards/train-%06d.tar", max_count=per_shard)  # the same bytes
    n = len(local)
    pattern = f"train-{{000000..{n - 1:06d}}}.tar"
    return os.path.join(tmp, "shards", pattern), f"s3://bench/shards/{pattern}"


def _label(sample: dict) -> int:
    return int(sample["cls"])


def _collate(samples: list) -> list:
    return samples


def data(samples: int, batch: int, tmp: str, repeats: int) -> dict[str, Any]:
    from dltrain.data import StreamingDataset

    local, remote = _shards(samples, tmp)
    out: dict[str, Any] = {}
    for rep in range(repeats):
        for workers in (0, 2):
            for where, pattern in (("local", local), ("s3", remote)):
                ds = StreamingDataset(pattern, batch_size=batch, shuffle=True, shuffle_buffer=1000, seed=rep,
                                      map=_label, collate_fn=_collate)
                loader = ds.loader(num_workers=workers)
                t0 = time.perf_counter()
                it = iter(loader)
                first = next(it)
                t1 = time.perf_counter()
                n = len(first)
                for b in it:
                    n += len(b)
                t2 = time.perf_counter()
                # Resume at 90 %: the state after 90 % of the batches, into a fresh loader.
                probe = StreamingDataset(pattern, batch_size=batch, shuffle=True, shuffle_buffer=1000, seed=rep,
                                         map=_label, collate_fn=_collate).loader(num_workers=0)
                pit = iter(probe)
                for _ in range(int(len(probe) * 0.9)):
                    next(pit)
                state = probe.state_dict()
                del pit, probe
                fresh = StreamingDataset(pattern, batch_size=batch, shuffle=True, shuffle_buffer=1000, seed=rep,
                                         map=_label, collate_fn=_collate).loader(num_workers=workers)
                t3 = time.perf_counter()
                fresh.load_state_dict(state)
                next(iter(fresh))
                t4 = time.perf_counter()
                row = out.setdefault(f"{where}-{workers}", {"samples_s": [], "first_s": [], "resume90_s": []})
                row["samples_s"].append((n - len(first)) / max(t2 - t1, 1e-9))
                row["first_s"].append(t1 - t0)
                row["resume90_s"].append(t4 - t3)
                del loader, fresh, it
    return out


# ---------------------------------------------------------------------- report
def _med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def report(res: dict[str, Any]) -> tuple[list[str], list[tuple[str, str, str, bool]]]:
    """The report section's lines and the verdicts (figure, value, target, passed)."""
    c = res["checkpoints"]
    v = c["variants"]
    lines = ["### 8. Object storage: checkpoints and shards on a local S3 server (benchlib/storage.py)", "",
             f"moto's S3 server in its own process on 127.0.0.1. Checkpoints: {c['params'] / 1e6:.1f} M parameters, "
             f"SGD with momentum, {c['checkpoint_bytes'] / 2**20:.0f} MiB per checkpoint, "
             f"{res['cfg']['saves']} saves per variant every {res['cfg']['every']} steps. *Blocked*: the training "
             "thread's time inside the save (median, all saves); *final wait*: the end of fit waiting for the last "
             "background write.", "",
             "| variant | blocked per save, median (all) | final wait | step | step during a background write |",
             "|---|---|---|---|---|"]
    for name, r in v.items():
        if "failed" in r:
            lines.append(f"| {name} | failed: {r['failed']} | | | |")
            continue
        allb = ", ".join(f"{b:.2f}" for b in r["blocked_s"])
        step = f"{r['step_s']:.2f} s" if r["step_s"] else "-"
        during = (f"{r['step_during_write_s']:.2f} s ({r['steps_during_write']} steps)"
                  if r["step_during_write_s"] else "-")
        lines.append(f"| {name} | **{_med(r['blocked_s']):.3f} s** ({allb}) | {r['final_wait_s']:.2f} s | {step} | "
                     f"{during} |")
    verdicts = []
    for where in ("local", "s3"):
        if "failed" in v[f"{where}-async"] or "failed" in v[f"{where}-sync"]:
            verdicts.append((f"8. async / sync checkpoint time blocking training ({where})", "failed",
                             f"<= {TARGET}", False))
            continue
        ratio = _med(v[f"{where}-async"]["blocked_s"]) / _med(v[f"{where}-sync"]["blocked_s"])
        verdicts.append((f"8. async / sync checkpoint time blocking training ({where})", f"{ratio:.3f}",
                         f"<= {TARGET}", ratio <= TARGET))
    lines += ["", "| data | workers | samples/s | first batch | first batch after resuming at 90 % |",
              "|---|---|---|---|---|"]
    d = res["data"]
    for workers in (0, 2):
        for where in ("local", "s3"):
            r = d[f"{where}-{workers}"]
            lines.append(f"| {where} | {workers} | {_med(r['samples_s']):,.0f} | {_med(r['first_s']):.3f} s | "
                         f"{_med(r['resume90_s']):.3f} s |")
        ratio = _med(d[f"s3-{workers}"]["samples_s"]) / _med(d[f"local-{workers}"]["samples_s"])
        lines.append(f"| s3 / local | {workers} | {ratio:.3f} | | |")
    lines += ["", "| figure | value | target | verdict |", "|---|---|---|---|"]
    lines += [f"| {f} | {val} | {t} | {'PASS' if ok else 'MISS'} |" for f, val, t, ok in verdicts]
    lines.append("")
    return lines, verdicts


def run(params_m: float = 100.0, saves: int = 4, every: int = 3, samples: int = 20_000, batch: int = 64,
        repeats: int = 3) -> dict[str, Any]:
    tmp = tempfile.mkdtemp(prefix="dltrain-bench-storage-")
    server = Server()
    try:
        load0 = os.getloadavg()
        res = {"cfg": {"params_m": params_m, "saves": saves, "every": every, "samples": samples, "batch": batch,
                       "repeats": repeats},
               "checkpoints": checkpoints(params_m, saves, every, tmp),
               "data": data(samples, batch, tmp, repeats)}
        res["load"] = [f"{x:.1f}" for x in (*load0, *os.getloadavg())]
        return res
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--params", type=float, default=100.0, help="model size, millions of parameters")
    p.add_argument("--saves", type=int, default=4)
    p.add_argument("--every", type=int, default=3, help="steps between saves")
    p.add_argument("--samples", type=int, default=20_000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    res = run(args.params, args.saves, args.every, args.samples, repeats=args.repeats)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    lines, _ = report(res)
    print("\n".join(lines))
    print(f"load (1/5/15 min) at start {res['load'][:3]}, at end {res['load'][3:]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
