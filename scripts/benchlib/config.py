"""Sizes, case names and targets of ``scripts/bench`` (shared by the parent and the workers)."""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = HERE.parent
ROOT = SCRIPTS.parent


FULL = {
    "repeats": 7,
    "loop": {"steps": 400, "batch": 64, "in_dim": 32, "hidden": 128, "classes": 10},
    "cnn": {"steps": 30, "batch": 64},
    # regimes: case 3's other shard sets (issue 27), dltrain against LitData: raw 2 KiB payloads, no decode
    # (reader-bound); ImageNet-like 256 px JPEGs (decode-bound). Sample counts are whole batches (nothing dropped).
    "data": {"samples": 10_000, "shards": 10, "batch": 64, "epochs": 2, "workers": [0, 2], "repeats": 9,
             "pause_s": 0.3, "regimes": {"raw": {"samples": 24_000, "shards": 12, "bytes": 2048},
                                         "jpeg": {"samples": 640, "shards": 4, "size": 256}}},
    "ddp": {"steps": 200, "batch": 64, "repeats": 7},
    "resume": {"samples": 100_000, "shards": 20, "batch": 64, "workers": 2, "repeats": 9},
    "ledger": {"steps": 600, "batch": 64, "workers": 2, "repeats": 7},
    "plugins": {"seconds": 5.0},
    # A save every 32 steps (~14 s): longer than a write takes (2.5 s local, 9.6 s on moto's S3, 2026-12-07), as an
    # async save needs; at a save every 4 steps (1.8 s) every save but the first waited for the previous write.
    "storage": {"params": 100, "saves": 3, "every": 32, "samples": 20_000, "repeats": 3},
    # issue 24: replica groups (torchft) vs DDP, fresh processes per run; then one run with a group killed
    "ft": {"steps": 200, "warmup": 20, "batch": 64, "width": 1024, "repeats": 3, "kill_step": 100},
    "resnet": {"steps": 50, "batch": 64, "size": 224},
    "gpt": {"steps": 50, "batch": 16, "context": 512, "layers": 6, "d_model": 512, "heads": 8, "vocab": 8192},
}
QUICK = {
    "repeats": 5,
    "loop": {"steps": 200, "batch": 64, "in_dim": 32, "hidden": 128, "classes": 10},
    "cnn": {"steps": 6, "batch": 64},
    "data": {"samples": 2_000, "shards": 4, "batch": 64, "epochs": 2, "workers": [0, 2], "repeats": 3,
             "pause_s": 0.3, "regimes": {"raw": {"samples": 4_096, "shards": 4, "bytes": 2048},
                                         "jpeg": {"samples": 128, "shards": 2, "size": 256}}},
    "ddp": {"steps": 60, "batch": 64, "repeats": 3},
    "resume": {"samples": 20_000, "shards": 8, "batch": 64, "workers": 2, "repeats": 3},
    "ledger": {"steps": 150, "batch": 64, "workers": 2, "repeats": 3},
    "plugins": {"seconds": 1.0},
    "storage": {"params": 5, "saves": 2, "every": 2, "samples": 2_000, "repeats": 1},
    "ft": {"steps": 60, "warmup": 10, "batch": 64, "width": 256, "repeats": 1, "kill_step": 30},
    "resnet": {"steps": 10, "batch": 32, "size": 224},
    "gpt": {"steps": 10, "batch": 8, "context": 256, "layers": 4, "d_model": 256, "heads": 4, "vocab": 8192},
}

# Case 1's "before" (scripts/bench --baseline): the last commit before core v2 (issue 12), whose loop measured
# 0.996x the hand loop in the held-out overhead check.
BASELINE = "5715e48"

CPU_CASES = ["loop", "cnn", "data", "ddp", "resume", "plugins", "ledger", "storage", "ft"]
CUDA_CASES = ["resnet", "gpt"]

TARGETS = {
    "loop": 1.03,  # dltrain time / hand-loop time
    "cnn": 1.01,
    "ddp": 1.05,
    "ft": 1.10,  # FaultTolerant (2 replica groups x 1 process) median step / DDP on 2 processes
    "data_ratio": 0.95,  # StreamingDataset samples/s / WebLoader samples/s
    "mixture_ratio": 0.95,  # Mixture of the same shards / one StreamingDataset, samples/s
    "data_gap_ms": 100.0,
    "data_first_s": 2.0,
    "resume_ratio": 1.5,  # time to first batch at 90% / at 10%
    "litdata_ratio": 1.1,  # dltrain / LitData samples/s, paired, where the loader is the bottleneck (raw, png)
    "litdata_parity": 0.95,  # ... where the decode is (jpeg): parity within the noise of paired rounds
    "quiet_load": 1.5,  # a verdict is "noisy", not PASS/MISS, when the load average exceeded this during the run
    "cuda": 1.03,
    "storage_async": 0.10,  # async / sync time a checkpoint blocks training (issue 23)
}
