"""Sharded (FSDP2, 2 ranks on gloo) checkpoints on the S3 test server: every rank's DCP shards written through
fsspec under a parts prefix, then one commit object; kill -9 before the commit and resume, bitwise equal to the
uninterrupted run on local disk; consolidation and load_from_checkpoint read the store."""

from __future__ import annotations

import json

import pytest
import torch

from dltrain import checkpoint as ckpt_io
from tests.distributed.test_fsdp2 import SCRIPT, assert_states_equal, reference
from tests.distributed.test_resume import effective_keys
from tests.helpers.distributed import run_distributed
from tests.helpers.s3 import SECRET

pytestmark = [pytest.mark.distributed, pytest.mark.slow]
LAUNCH = 400  # seconds per launch: 2 ranks, 24 steps, a save on the store every 4 (~2 min at load 13 on 2 cores)


@pytest.mark.timeout(900)
def test_sharded_checkpoints_on_s3_survive_kills_and_resume_bitwise(s3, tmp_path, tmp_path_factory, capsys):
    ref = reference(tmp_path_factory)  # 2 ranks, checkpoints on local disk
    run = s3.url("fsdp2")
    out = tmp_path / "run"
    # Checkpoints every 4 steps (the reference: every 2; saving draws no random number, so the runs are the same).
    common = ["--out", str(out), "--ckpt-dir", run, "--every", "4"]
    # Killed on rank 0 at the second save (step 8), every shard written, before its commit object.
    run_distributed(SCRIPT, [*common, "--kill-before-commit", "2"], nproc=2, check=False, env=s3.env, timeout=LAUNCH)
    assert (out / "killed-in-save.marker").exists()
    assert ckpt_io.find_last(run) == f"{run}/last.ckpt"
    assert json.loads(s3.read("fsdp2/last.ckpt"))["global_step"] == 4
    assert "fsdp2/epoch=0-step=8.ckpt" not in s3.objects("fsdp2")
    assert len({k.split("/")[2] for k in s3.objects("fsdp2/.parts")}) == 2  # step 4's and the orphan
    # Resumed from last (step 4): the orphaned parts of step 8 are removed at the start.
    run_distributed(SCRIPT, [*common, "--resume", "last"], nproc=2, env=s3.env, timeout=LAUNCH)
    assert_states_equal(torch.load(ref / "final.pt"), torch.load(out / "final.pt"))
    for rank in (0, 1):
        assert effective_keys(ref, rank) == effective_keys(out, rank)

    keys = s3.objects("fsdp2")
    commits = sorted(k for k in keys if k.endswith(".ckpt"))
    assert commits == ["fsdp2/epoch=1-step=20.ckpt", "fsdp2/epoch=1-step=24.ckpt", "fsdp2/last.ckpt"], keys
    named = {json.loads(s3.read(k))["parts"] for k in commits}
    assert {k.split("/")[2] for k in keys if "/.parts/" in k} == {p.split("/")[1] for p in named}, "orphaned parts"
    record = json.loads(s3.read("fsdp2/last.ckpt"))
    assert record["sharded"] and {"meta.pt", ".metadata", "__0_0.distcp", "__1_0.distcp"} <= set(record["files"])

    # One process reads the store: consolidate to a local file and to the store; load_from_checkpoint.
    from dltrain.cli import main as cli_main
    from tests.distributed._train import KeyTask

    assert cli_main(["ckpt", "consolidate", f"{run}/last.ckpt", str(tmp_path / "full.ckpt")]) == 0
    assert cli_main(["ckpt", "consolidate", f"{run}/last.ckpt", f"{run}/consolidated.ckpt"]) == 0
    capsys.readouterr()
    full = ckpt_io.load(tmp_path / "full.ckpt")
    again = ckpt_io.load(f"{run}/consolidated.ckpt")
    final = torch.load(out / "final.pt")
    for name, value in final["model"].items():
        assert torch.equal(full["state_dict"][name], value) and torch.equal(again["state_dict"][name], value), name
    task = KeyTask.load_from_checkpoint(f"{run}/last.ckpt", out=str(tmp_path))
    for name, value in task.state_dict().items():
        if name in final["model"]:
            assert torch.equal(value, final["model"][name]), name
    for key in s3.objects():
        assert SECRET.encode() not in s3.read(key), key
