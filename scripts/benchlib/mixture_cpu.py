"""A Mixture against one StreamingDataset over the same shards, in CPU seconds per sample (issue 16).

Run it (from ``scripts/``; prints the result)::

    PYTHONPATH=.:../src ../.venv/bin/python -m benchlib.mixture_cpu --workers 0 --repeats 12

Case 3's data (10,000 PNG 32x32 images in 10 shards, written once to ``--data``) read for one epoch per run, batch
64, shuffle buffer 1000: ``streaming`` is one `StreamingDataset` over the 10 shards, ``mixture`` the same shards as
3 sources (every third shard) weighted by their sizes, so both read the same samples per epoch. The two variants
alternate in a random order per repeat; each run counts the CPU time of this process and of its loader workers
(``RUSAGE_CHILDREN``: non-persistent workers are reaped at the epoch's end), which a busy neighbour disturbs far
less than wall time. Reported: samples per CPU second and per wall second, median of the per-repeat ratios
mixture / streaming, with their range.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import time
from typing import Any

import numpy as np


def _images(folder: str) -> list[str]:
    import io

    from PIL import Image

    from dltrain.data import write_shards

    if not os.path.exists(os.path.join(folder, "train-000009.tar")):
        rng, pngs = np.random.default_rng(0), []
        for _ in range(256):  # case 3's kind of sample: random 32x32 RGB PNGs
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, format="PNG")
            pngs.append(buf.getvalue())
        samples = ({"__key__": f"img{i:07d}", "png": pngs[i % len(pngs)], "cls": i % 10} for i in range(10_000))
        write_shards(samples, os.path.join(folder, "train-%06d.tar"), max_count=1000)
    return sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(".tar"))


def _cpu() -> float:
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


def _epoch(dataset: Any, workers: int) -> tuple[float, float]:
    loader = dataset.loader(num_workers=workers, persistent_workers=False)
    loader.set_epoch(1)
    cpu, wall, n = _cpu(), time.perf_counter(), 0
    for batch in loader:
        n += len(batch[1])
    return n / (_cpu() - cpu), n / (time.perf_counter() - wall)


def main() -> None:
    from benchlib.datacase import decode_png, stream_pair
    from dltrain.data import Mixture, StreamingDataset

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--repeats", type=int, default=12)
    p.add_argument("--data", default="/tmp/dltrain-bench-mixture")
    args = p.parse_args()
    urls = _images(args.data)

    def make(variant: str, seed: int) -> Any:
        common: dict[str, Any] = {"batch_size": 64, "decode": {"png": decode_png}, "map": stream_pair,
                                  "shuffle": True, "shuffle_buffer": 1000}
        if variant == "streaming":
            return StreamingDataset(urls, seed=seed, **common)
        sources = [StreamingDataset(urls[i::3], **common) for i in range(3)]
        return Mixture(sources, weights=[s.num_samples for s in sources], seed=seed)

    runs: dict[str, list[tuple[float, float]]] = {"streaming": [], "mixture": []}
    order = np.random.default_rng(0)
    for rep in range(args.repeats):
        for variant in order.permutation(list(runs)).tolist():
            runs[variant].append(_epoch(make(variant, rep), args.workers))
    cpu_ratio = [m[0] / s[0] for m, s in zip(runs["mixture"], runs["streaming"])]
    wall_ratio = [m[1] / s[1] for m, s in zip(runs["mixture"], runs["streaming"])]
    print(f"{args.workers} workers, {args.repeats} interleaved repeats, load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())} at the end")
    for variant, rs in runs.items():
        print(f"  {variant:9s} {statistics.median(r[0] for r in rs):8.0f} samples per CPU second, "
              f"{statistics.median(r[1] for r in rs):8.0f} per wall second")
    print(f"  mixture / streaming: CPU {statistics.median(cpu_ratio):.3f} ({min(cpu_ratio):.3f}-{max(cpu_ratio):.3f}), "
          f"wall {statistics.median(wall_ratio):.3f} ({min(wall_ratio):.3f}-{max(wall_ratio):.3f})")


if __name__ == "__main__":
    main()
