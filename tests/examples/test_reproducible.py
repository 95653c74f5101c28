"""The same command with the same --seed gives the same metrics (issue 14: the vision example gave test accuracy
0.82 and 0.58, because Trainer(seed=...) seeded after the model had drawn its weights)."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.examples._run import finish, start

pytest.importorskip("torchvision")
pytest.importorskip("sklearn")


@pytest.mark.slow
def test_vision_example_twice_same_seed_same_metrics(tmp_path: Path) -> None:
    tiny = ["--max-epochs", "2", "--limit-batches", "4", "--batch-size", "32", "--workers", "1", "--no-progress",
            "--seed", "7"]
    # Two independent runs at once (each writes its own shards), as two users would run the same command.
    procs = [start("vision", [*tiny, "--data-dir", str(tmp_path / f"data{i}"), "--root-dir", str(tmp_path / f"run{i}")])
             for i in (0, 1)]
    outs = [finish(p, timeout=150)[0] for p in procs]
    metrics = [[line for line in out.splitlines() if line.startswith("test metrics:")] for out in outs]
    assert len(metrics[0]) == 1 and "test/acc=" in metrics[0][0], outs[0]
    assert metrics[0] == metrics[1]
    # Every logged value, at full precision (train, val and test, step by step).
    csvs = [(tmp_path / f"run{i}" / "lightning_logs" / "version_0" / "metrics.csv").read_text() for i in (0, 1)]
    assert csvs[0].count("\n") > 3 and csvs[0] == csvs[1]
