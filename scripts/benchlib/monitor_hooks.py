"""The per-step cost of `dltrain.callbacks.ThroughputMonitor`'s batch hooks alone (issue 17), without a model.

    PYTHONPATH=scripts:src .venv/bin/python -m benchlib.monitor_hooks [--steps 20000]

Calls ``on_train_batch_start`` and ``on_train_batch_end`` with bench case 1's batch (64 x 32 floats and 64
labels) and a stand-in trainer that never reaches a logging step, without and with MFU (the FLOPs per sample as
after the first batch was counted), and times ``batch_size_of`` (the default batch-size lookup) alone. Case 1 of
``scripts/bench`` measures the monitor inside a real fit; this shows what its hooks themselves cost.
"""

from __future__ import annotations

import argparse
import time
import types


def main() -> None:
    import torch

    from dltrain._batch import batch_size_of
    from dltrain.callbacks import ThroughputMonitor

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=20_000)
    n = p.parse_args().steps
    batch = (torch.randn(64, 32), torch.randint(0, 10, (64,)))
    trainer = types.SimpleNamespace(global_step=5, num_training_batches=10**9, log_every_n_steps=50)
    for name, monitor in (("ThroughputMonitor()", ThroughputMonitor()),
                          ("with MFU", ThroughputMonitor(measure_flops=True, peak_flops=1e11))):
        if monitor.measure_flops:
            monitor.flops_per_sample = 1.0  # as after the first batch was counted: no FlopCounterMode per step
        monitor._reset(time.perf_counter(), 0)
        t = time.perf_counter()
        for i in range(n):
            monitor.on_train_batch_start(trainer, None, batch, i)  # type: ignore[arg-type]
            monitor.on_train_batch_end(trainer, None, None, batch, i)  # type: ignore[arg-type]
        print(f"{name}: batch hooks {1e6 * (time.perf_counter() - t) / n:.1f} µs per step")
    t = time.perf_counter()
    for _ in range(n):
        batch_size_of(batch)
    print(f"batch_size_of alone: {1e6 * (time.perf_counter() - t) / n:.1f} µs")


if __name__ == "__main__":
    main()
