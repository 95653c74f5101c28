"""Several ranks on CUDA (skipped without a GPU). One GPU is enough: two torchrun "nodes" of one process each
share it over gloo, which exercises the multi-rank CUDA paths (SyncBatchNorm, DDP gradient sync)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers.distributed import REPO, run_distributed

pytestmark = pytest.mark.cuda

SCRIPT = Path(__file__).with_name("_sync_bn.py")


def test_sync_batchnorm_two_ranks_match_one_rank_with_the_whole_batch(tmp_path):
    out = tmp_path / "run"
    env = {"PYTHONPATH": f"{REPO / 'src'}:{REPO}"}
    single = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out)], env={**os.environ, **env},
                            capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stdout[-3000:] + single.stderr[-3000:]
    run_distributed(SCRIPT, ["--out", str(out)], nproc=1, nnodes=2, timeout=300)
    reports = [json.loads((out / f"report-rank{r}-world2.json").read_text()) for r in (0, 1)]
    assert all(r["bn_kinds"] == ["SyncBatchNorm"] and r["world_size"] == 2 for r in reports)
    assert all(r["device"].startswith("cuda") for r in reports)
    assert reports[0]["global_step"] == reports[1]["global_step"] == 8
    ref = torch.load(out / "state-rank0-world1.pt")
    ranks = [torch.load(out / f"state-rank{r}-world2.pt") for r in (0, 1)]
    assert ranks[0].keys() == ref.keys()
    for key, value in ref.items():
        assert torch.equal(ranks[0][key], ranks[1][key]), key  # replicas identical, BN buffers included
        if value.dtype.is_floating_point:
            # Same statistics over the same global batches: equal up to float reduction order.
            torch.testing.assert_close(ranks[0][key], value, rtol=1e-5, atol=1e-6, msg=key)
        else:
            assert torch.equal(ranks[0][key], value), key  # num_batches_tracked
    # Control: without sync_batchnorm each rank normalizes with its own half-batch statistics, and the same
    # comparison fails by far more than the tolerance (so the check above can fail).
    control = tmp_path / "control"
    run_distributed(SCRIPT, ["--out", str(control), "--no-sync"], nproc=1, nnodes=2, timeout=300)
    assert json.loads((control / "report-rank0-world2.json").read_text())["bn_kinds"] == ["BatchNorm1d"]
    unsynced = torch.load(control / "state-rank0-world2.pt")
    assert max((unsynced[k] - ref[k]).abs().max().item() for k in ref if ref[k].dtype.is_floating_point) > 1e-3
