"""DDP on CPU with gloo: equivalence with one process, rank hygiene, exact evaluation, two nodes, no hangs."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
import torch

from tests.helpers.distributed import run_distributed

pytestmark = pytest.mark.distributed
HERE = Path(__file__).parent
TRAIN = HERE / "_train.py"
FAULTS = HERE / "_faults.py"


def report(out: Path, rank: int = 0) -> dict:
    return json.loads((out / f"report-rank{rank}.json").read_text())


def test_two_processes_match_one_process_and_only_rank_zero_writes(tmp_path):
    """2 ranks x batch 4 == 1 rank x batch 8 (float32, within 1e-6), with accumulation and clipping."""
    common = ["--epochs", "2", "--accumulate", "2", "--clip", "0.5", "--dropout", "0", "--logger", "csv",
              "--every", "4", "--multi-val"]
    single = tmp_path / "single"
    run_distributed(TRAIN, ["--out", str(single), *common], nproc=1)
    double = tmp_path / "double"
    run_distributed(TRAIN, ["--out", str(double), *common], nproc=2)

    a = torch.load(single / "final.pt")
    b = torch.load(double / "final.pt")
    for name in a:
        assert torch.allclose(a[name].float(), b[name].float(), atol=1e-6, rtol=0), name
    r0, r1 = report(double, 0), report(double, 1)
    assert r0["world_size"] == 2 and r0["global_step"] == report(single)["global_step"] == 12
    # sync_dist=True reduces a rank-dependent value; epoch aggregates are the same on every rank.
    assert r0["metrics"]["rank_value"] == r1["metrics"]["rank_value"] == 0.5
    # Exact distributed evaluation of two validation sets, each on its own: 21 samples over 2 ranks (11 + 10, no
    # padding) and 13 (7 + 6) give the one-process values, per set, in fit and in validate().
    one = report(single)
    for idx, count in ((0, 21.0), (1, 13.0)):
        name = f"/dataloader_idx_{idx}"
        assert r0["metrics"]["val/count" + name] == r1["metrics"]["val/count" + name] == count
        for key in ("val/loss", "val/mse_metric"):
            assert abs(r0["metrics"][key + name] - one["metrics"][key + name]) < 1e-6, key + name
            assert abs(r0["validate"][idx][key + name] - r0["metrics"][key + name]) < 1e-6, key + name
        assert abs(r0["metrics"]["val/mse_metric" + name] - r0["metrics"]["val/loss" + name]) < 1e-6
        assert all(k.endswith(name) for k in r0["validate"][idx] if k.startswith("val/")), r0["validate"][idx]
    assert r0["metrics"]["val/loss/dataloader_idx_0"] != r0["metrics"]["val/loss/dataloader_idx_1"]
    # Only rank zero writes logs and checkpoints: one CSV version folder, one set of checkpoints.
    files = [f for f in r1["files"] if not f.startswith("keys-")]
    assert sorted(f for f in files if f.startswith("logs/")) == ["logs/version_0/hparams.yaml",
                                                                  "logs/version_0/metrics.csv"]
    assert [f for f in files if f.startswith("ckpt/")] == ["ckpt/epoch=1-step=12.ckpt", "ckpt/epoch=1-step=8.ckpt",
                                                           "ckpt/last.ckpt"]
    # Both ranks trained on disjoint halves of every global batch.
    keys = [[json.loads(line)["keys"] for line in (double / f"keys-rank{r}.jsonl").read_text().splitlines()]
            for r in (0, 1)]
    for k0, k1 in zip(*keys):
        assert not set(k0) & set(k1)


def test_two_nodes_rendezvous_on_localhost(tmp_path):
    """torchrun --nnodes=2 with a c10d rendezvous, one process per "node", trains like one node with 2 processes."""
    out = tmp_path / "nodes"
    result = run_distributed(TRAIN, ["--out", str(out), "--epochs", "1", "--dropout", "0"], nproc=1, nnodes=2)
    r0, r1 = report(out, 0), report(out, 1)
    assert r0["world_size"] == r1["world_size"] == 2
    assert r0["global_step"] == r1["global_step"] == 12
    assert (out / "final.pt").exists(), result.stdout[-2000:]


def test_a_rank_with_nothing_to_contribute_does_not_hang():
    """training_step returning None, or a None batch, on one rank: it joins the all-reduce with zero gradients."""
    result = run_distributed(FAULTS, ["none"], nproc=2, timeout=150)
    assert result.stdout.count("DLTRAIN-TEST-COMPLETED") == 2


def test_a_script_whose_last_act_is_a_collective_exits_cleanly():
    """After a DDP fit, a collective just before the interpreter exits: exit code 0, not an abort (-6) of a rank
    whose work was done (see dltrain.distributed.destroy_process_group_at_exit). Without the exit handler's GIL
    hand-over this aborted in 3 of 4 launches, so three launches catch a regression nearly always."""
    for _ in range(3):
        # torchrun itself: what is tested is how a fresh interpreter's exit meets gloo's threads.
        result = run_distributed(HERE / "_exit_after_collective.py", nproc=2, timeout=120, launcher="torchrun")
        assert "terminate called" not in result.stdout


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("raise", r"rank 1, global step 3.*boom in training_step|rank 1 failed at global step 3"),
        ("exhausted", r"rank 0 ran out of training data after 3 batches in epoch 0"),
        ("unused", r"some parameters got no gradient.*ddp_find_unused_parameters_true"),
        ("callback", r"callback failed on rank 0"),
        ("data", r"rank 1, global step 3.*bad payload \(shard 'shard-000003.tar', sample 'sample-42'\)"),
        ("unequal", r"DistributedError: the ranks have different numbers of training batches this epoch "
                    r"\(\{0: 3, 1: 5\}\)"),
    ],
)
def test_a_failing_rank_stops_the_job_with_a_clear_error(mode, expected):
    start = time.monotonic()
    result = run_distributed(FAULTS, [mode], nproc=2, check=False, timeout=150)
    elapsed = time.monotonic() - start
    assert result.returncode != 0
    assert re.search(expected, result.stdout, re.S), result.stdout[-4000:]
    # Startup of two processes on a loaded 2-core machine takes a while; the failure itself must not wait for
    # the 30-minute collective timeout.
    assert elapsed < 120
    assert "DLTRAIN-TEST-COMPLETED" not in result.stdout


def test_manual_optimization_under_ddp_keeps_replicas_identical():
    """manual_backward goes through the strategy: gradients are all-reduced, replicas stay equal."""
    result = run_distributed(Path(__file__).parent / "_manual_ddp.py", nproc=2, timeout=150)
    assert result.stdout.count("DLTRAIN-TEST-COMPLETED") == 2
