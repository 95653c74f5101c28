"""The loader's own cost per sample, in CPU microseconds, with the decode a no-op (issue 27 item 1).

Run it (from ``scripts/``; prints the result)::

    PYTHONPATH=.:../src ../.venv/bin/python -m benchlib.reader_cpu --repeats 7

Two kinds of shards, written once under ``--data``: ``raw`` (24,000 samples of 2 KiB random bytes and a class, in
12 shards) and ``png`` (case 3's 10,000 32x32 PNGs in 10 shards). One shuffled epoch per run (batch 64, shuffle
buffer 1000), no loader workers (everything in this process), the payload left as bytes (its ``decode`` is the
identity), each sample mapped to ``(payload, class, key)`` and collated by torch's ``default_collate``. A run counts the CPU time of this process (``RUSAGE_SELF``), which a busy
neighbour disturbs far less than wall time; reported: the median of the runs in µs per sample, and its range.
With ``PYTHONPATH`` pointing at another checkout's ``src``, the same command measures that version (before/after).
The shards' index is written by the version that wrote them: remove ``--data`` to compare index versions.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import time
from typing import Any

import numpy as np


def raw_shards(folder: str, samples: int = 24_000, shards: int = 12, size: int = 2048) -> list[str]:
    """``samples`` samples of ``size`` random bytes (``bin``) and a class (``cls``), written once."""
    from dltrain.data import write_shards

    if not os.path.exists(os.path.join(folder, f"raw-{shards - 1:06d}.tar")):
        rng = np.random.default_rng(0)
        blobs = [rng.integers(0, 256, size, dtype=np.uint8).tobytes() for _ in range(256)]
        gen = ({"__key__": f"r{i:07d}", "bin": blobs[i % 256], "cls": i % 10} for i in range(samples))
        write_shards(gen, os.path.join(folder, "raw-%06d.tar"), max_count=-(-samples // shards))
    return sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.startswith("raw-") and f.endswith(".tar"))


def png_shards(folder: str) -> list[str]:
    """Case 3's kind of sample: 10,000 random 32x32 RGB PNGs (256 distinct, cycled) and a class, written once."""
    import io

    from PIL import Image

    from dltrain.data import write_shards

    if not os.path.exists(os.path.join(folder, "png-000009.tar")):
        rng, pngs = np.random.default_rng(0), []
        for _ in range(256):
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, format="PNG")
            pngs.append(buf.getvalue())
        gen = ({"__key__": f"img{i:07d}", "png": pngs[i % 256], "cls": i % 10} for i in range(10_000))
        write_shards(gen, os.path.join(folder, "png-%06d.tar"), max_count=1000)
    return sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.startswith("png-") and f.endswith(".tar"))


def _same(data: bytes) -> bytes:
    return data


def _triple(field: str) -> Any:
    def pick(sample: dict[str, Any]) -> tuple[bytes, int, str]:
        return sample[field], sample["cls"], sample["__key__"]

    return pick


def _cpu() -> float:
    me = resource.getrusage(resource.RUSAGE_SELF)
    return me.ru_utime + me.ru_stime


def epoch_cpu_us(urls: list[str], field: str, seed: int) -> tuple[float, float, int]:
    """(CPU µs per sample, wall µs per sample, samples) of one shuffled epoch with no workers."""
    from dltrain.data import StreamingDataset

    ds = StreamingDataset(urls, batch_size=64, decode={field: _same}, map=_triple(field), shuffle=True,
                          shuffle_buffer=1000, seed=seed)
    loader = ds.loader(num_workers=0)
    loader.set_epoch(1)
    cpu, wall, n = _cpu(), time.perf_counter(), 0
    for batch in loader:
        n += len(batch[1])
    cpu, wall = _cpu() - cpu, time.perf_counter() - wall
    return 1e6 * cpu / n, 1e6 * wall / n, n


def litdata_epoch_cpu_us(urls: list[str], regime: str, folder: str, seed: int) -> tuple[float, float, int]:
    """`epoch_cpu_us` for LitData's StreamingDataset over the same samples (converted once with
    ``litdata.optimize``, as case 3 does), the same map to (payload, class, key) and collate."""
    from benchlib.peers import convert, make_loader

    info = convert("litdata", urls, os.path.join(folder, f"litdata-{regime}"), "bin" if regime == "raw" else "png")
    loader = make_loader("litdata", info["dir"], 64, 0, seed, regime=regime)
    cpu, wall, n = _cpu(), time.perf_counter(), 0
    for batch in loader:
        n += len(batch[1])
    cpu, wall = _cpu() - cpu, time.perf_counter() - wall
    return 1e6 * cpu / n, 1e6 * wall / n, n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--data", default="/tmp/dltrain-bench-reader")
    p.add_argument("--kinds", default="raw,png")
    p.add_argument("--litdata", action="store_true", help="also LitData over the raw samples (the bench extra: "
                   "run with .venv/bench/bin/python)")
    args = p.parse_args()
    os.makedirs(args.data, exist_ok=True)
    import dltrain

    kinds = {"raw": (raw_shards, "bin"), "png": (png_shards, "png")}
    load = os.getloadavg()[0]
    print(f"dltrain from {os.path.dirname(dltrain.__file__)}; load average {load:.1f} at the start")
    for kind in args.kinds.split(","):
        make, field = kinds[kind]
        urls = make(args.data)
        variants = {"dltrain": lambda rep, urls=urls, field=field: epoch_cpu_us(urls, field, rep)}
        if args.litdata and kind == "raw":
            variants["litdata"] = lambda rep, urls=urls: litdata_epoch_cpu_us(urls, "raw", args.data, rep)
        runs: dict[str, list[tuple[float, float, int]]] = {v: [] for v in variants}
        for rep in range(-1, args.repeats):  # -1: warm-up (page cache, imports, conversion)
            for v, run in variants.items():
                out = run(max(rep, 0))
                if rep >= 0:
                    runs[v].append(out)
        for v, rs in runs.items():
            cpu, wall = [r[0] for r in rs], [r[1] for r in rs]
            print(f"  {kind} {v}: {rs[0][2]} samples, CPU {statistics.median(cpu):.1f} µs/sample "
                  f"({min(cpu):.1f}-{max(cpu):.1f}), wall {statistics.median(wall):.1f} µs/sample, {args.repeats} runs")
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
