"""examples/vision/train.py end to end on a few batches: under torchrun with 2 processes (gloo on CPU)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torchvision")
pytest.importorskip("sklearn")

from tests.helpers.distributed import run_distributed

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "vision" / "train.py"


@pytest.mark.distributed
def test_example_two_processes_few_batches(tmp_path: Path) -> None:
    args = ["--data-dir", str(tmp_path / "data"), "--root-dir", str(tmp_path / "runs"), "--epochs", "1",
            "--max-steps", "3", "--limit-batches", "2", "--batch-size", "16", "--workers", "1", "--no-progress",
            "--mixup", "0.2", "--cutmix", "1.0"]
    result = run_distributed(EXAMPLE, args, nproc=2, timeout=150)
    out = result.stdout
    assert out.count("test metrics:") == 1, out  # printed by rank 0 only
    assert "test/acc=" in out and "test/acc_top5=" in out
    logs = sorted((tmp_path / "runs").glob("lightning_logs/version_*"))
    assert logs and (logs[-1] / "metrics.csv").is_file() and (logs[-1] / "metrics.png").is_file()
    # the shards were written once (by local rank 0) and reused by the other process
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["digits"]
