"""kill -9 and resume with the shards and the checkpoints on the S3 test server (DDP, 2 ranks, 2 loader workers,
asynchronous saves, the SampleLedger on the store too): bitwise equal to the same run on local disk, every sample
once per epoch, and `dltrain audit s3://...` of the run's ledger finds every sample of every epoch once."""

from __future__ import annotations

import json

import pytest

from tests.distributed.test_kill_random import EPOCHS, N, compare
from tests.helpers.distributed import run_distributed

pytestmark = [pytest.mark.distributed, pytest.mark.slow]
TRAIN = "tests/distributed/_train.py"
ARGS = ["--samples", str(N), "--batch-size", "8", "--epochs", str(EPOCHS), "--every", "2", "--workers", "2",
        "--data", "stream", "--shard-size", "13", "--ledger", "--scheduler", "step", "--dropout", "0.2"]
LAUNCH = 400


@pytest.mark.timeout(1200)
def test_kill_and_resume_with_data_and_checkpoints_on_s3_equals_local_disk(s3, tmp_path, capsys):
    from tests.helpers.distributed import REPO

    ref, out = tmp_path / "local", tmp_path / "s3"
    run_distributed(REPO / TRAIN, ["--out", str(ref), *ARGS], nproc=2, timeout=LAUNCH)
    on_store = ["--out", str(out), *ARGS, "--shards-url", s3.url("shards"), "--ckpt-dir", s3.url("ckpt"),
                "--async-save", "--ledger-dir", s3.url("ledger")]
    # Rank 1 killed after step 9 (epoch 1): the newest checkpoint on the store is step 8's, or step 7's (the epoch
    # end) if the save of step 8 was still being written in the background.
    killed = run_distributed(REPO / TRAIN, [*on_store, "--kill-steps", "9:1"], nproc=2, timeout=LAUNCH, check=False,
                             env=s3.env)
    assert (out / "killed-step9.marker").exists(), killed.stdout[-3000:]
    assert not (out / "shards").exists()  # the shards are on the store only
    run_distributed(REPO / TRAIN, [*on_store, "--resume"], nproc=2, timeout=LAUNCH, env=s3.env)
    problems = compare(ref, out, world=2, launches=2)
    assert not problems, "\n".join(problems)
    assert sorted(k for k in s3.objects("shards")) == [*(f"shards/train-{i:06d}.tar" for i in range(5)),
                                                        "shards/train.index.json"]
    last = json.loads(s3.read("ckpt/last.ckpt"))
    assert last["global_step"] == 14
    assert not (out / "ledger").exists()  # the ledger is on the store only
    rounds = sorted(k for k in s3.objects("ledger"))
    assert len(rounds) == 4 and all(k.endswith(".jsonl") for k in rounds), rounds  # 2 launches x 2 ranks
    start = json.loads(s3.read(rounds[0]).decode().splitlines()[0])
    assert all(u.startswith(f"s3://{s3.name}/shards/train-") for u in start["source"]["urls"])
    from dltrain.audit import audit
    from dltrain.cli import main as cli_main

    report = audit(s3.url("ledger"))
    assert not report.problems, report.problems
    assert len(report.rounds) == 2 and [e.epoch for e in report.epochs] == list(range(EPOCHS))
    assert all(e.finished and e.seen == N and e.planned == N for e in report.epochs), report.epochs
    capsys.readouterr()
    assert cli_main(["audit", s3.url()]) == 0  # the run's root on the store: its ledger folder is found
    assert f"sample ledger of {s3.url()}" in capsys.readouterr().out
