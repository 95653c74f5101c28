"""Tensor parallelism on a 2-D mesh (data x tensor) on CPU with gloo: ``dltrain.FSDP2(tensor_parallel_size=2)`` on
4 processes (2 data-parallel x 2 tensor-parallel) trains like one process with the whole batch, reads every sample
once per epoch by data-parallel rank, validates exactly, and its sharded checkpoints resume bitwise at the same
layout (also through Lightning's ``ModelParallelStrategy``) and load at another (DP1 x TP1, one process); on a
StreamingDataset the SampleLedger writes one file per data-parallel rank and audits complete.

Every launch runs tests/distributed/_tp_train.py; the runs two tests share are made once per session.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dltrain import checkpoint as ckpt_io
from tests.distributed.test_fsdp2 import assert_states_equal, report
from tests.helpers.distributed import run_distributed

pytestmark = [pytest.mark.distributed, pytest.mark.slow]
SCRIPT = Path(__file__).parent / "_tp_train.py"
STEPS_PER_EPOCH = 12  # 96 samples, global batch 8


def val_shards(base: Path) -> Path:
    """StreamingDataset shards: 21 validation samples (Keyed(21)) in shards of 6, and the 96 training samples
    (Keyed(96)) in shards of 13."""
    from dltrain.data import write_shards
    from tests.distributed._train import Keyed

    folder = base / "tp-shards"
    for stem, n, size in (("val", 21, 6), ("train", 96, 13)):
        if not (folder / f"{stem}.index.json").exists():
            ds = Keyed(n)
            write_shards(({"__key__": f"{i:05d}", "npy": ds.x[i].numpy(), "y.npy": ds.y[i].numpy(), "cls": i}
                          for i in range(n)), str(folder / f"{stem}-%06d.tar"), max_count=size)
    return folder


def run(base: Path, name: str, nproc: int, *args: str) -> Path:
    out = base / name
    if not (out / "final.pt").exists():
        run_distributed(SCRIPT, ["--out", str(out), "--val-shards", str(val_shards(base)), *args], nproc=nproc,
                        timeout=240)
    return out


def keys_by_epoch(out: Path, rank: int) -> dict[int, list[list[int]]]:
    """The batches (sample keys) a rank trained on, per epoch, in order."""
    epochs: dict[int, list[list[int]]] = {}
    for line in (out / f"keys-rank{rank}.jsonl").read_text().splitlines():
        entry = json.loads(line)
        epochs.setdefault(entry["epoch"], []).append(entry["keys"])
    return epochs


def test_dp2_tp2_matches_one_process_reads_each_sample_once_and_validates_exactly(tmp_path_factory):
    """DP2 x TP2 (batch 4 per data-parallel rank) against one process (batch 8), 2 epochs, 24 SGD steps with
    momentum: weights within 1e-6 and momentum within 5e-6 (measured 6e-8 and 5e-7: only float rounding differs,
    the row-wise layer sums partial products in another order); the tensor-parallel peers trained on the same
    batches; the two data-parallel ranks on disjoint halves, every sample once per epoch; validation (a
    StreamingDataset, given the data-parallel split by the Trainer; ``resolve_rank`` after the fit still gives the
    global rank) gives the one-process count and key sum exactly and its loss
    within 1e-6 (a sum over ranks would count each sample twice)."""
    base = tmp_path_factory.getbasetemp()
    single = run(base, "tp-single", 1, "--strategy", "auto", "--tp", "1")
    tp = run(base, "tp-dp2xtp2", 4, "--tp", "2")
    a, b = torch.load(single / "final.pt"), torch.load(tp / "final.pt")
    for name in a["model"]:
        assert torch.allclose(a["model"][name], b["model"][name], atol=1e-6, rtol=0), name
        assert torch.allclose(a["optimizer"]["state"][name]["momentum_buffer"],
                              b["optimizer"]["state"][name]["momentum_buffer"], atol=5e-6, rtol=0), name
    reports = [report(tp, r) for r in range(4)]
    assert [(r["data_parallel_rank"], r["data_parallel_size"]) for r in reports] == [(0, 2), (0, 2), (1, 2), (1, 2)]
    # The validation loader was given that split by its Trainer; nothing of it is left in the process afterwards.
    assert [r["loader_splits"]["val"] for r in reports] == [[0, 2], [0, 2], [1, 2], [1, 2]]
    assert [r["resolved_after_fit"] for r in reports] == [[r, 4] for r in range(4)]
    assert reports[0]["dtensor_params"] == ["net.0.bias", "net.0.weight", "net.2.bias", "net.2.weight",
                                            "net.4.bias", "net.4.weight"]  # TP on net.0/net.2, FSDP on all
    keys = [keys_by_epoch(tp, r) for r in range(4)]
    assert keys[0] == keys[1] and keys[2] == keys[3]  # tensor-parallel peers: the same batches
    one = keys_by_epoch(single, 0)
    for epoch in (0, 1):
        assert len(keys[0][epoch]) == len(keys[2][epoch]) == STEPS_PER_EPOCH
        assert sorted(k for batch in keys[0][epoch] + keys[2][epoch] for k in batch) == list(range(96))
        # Step by step the two data-parallel halves are the one process's batch.
        for step in range(STEPS_PER_EPOCH):
            assert sorted(keys[0][epoch][step] + keys[2][epoch][step]) == sorted(one[epoch][step])
    ref = report(single, 0)["metrics"]
    for r in reports:
        assert r["metrics"]["val/count"] == ref["val/count"] == 21.0
        assert r["metrics"]["val/keysum"] == ref["val/keysum"] == 210.0
        assert r["metrics"]["val/loss"] == pytest.approx(ref["val/loss"], abs=1e-6)
        assert r["metrics"]["val/mse_metric"] == pytest.approx(ref["val/mse_metric"], abs=1e-6)  # torchmetrics


def test_a_tp_checkpoint_resumes_bitwise_at_the_same_layout_and_loads_at_another(tmp_path, tmp_path_factory):
    """The DP2 x TP2 run's mid-epoch checkpoint (step 9 of 12): resumed on the same layout through Lightning's
    ``ModelParallelStrategy`` (its own parallelize_fn, the same plan), the run ends bitwise equal to the
    uninterrupted one; resumed on one process (``FSDP2()``, DP1 x TP1) the restored model and optimizer state
    equal the checkpoint's (consolidated) exactly, epoch 0 is finished with every sample once, and the final
    weights are within 1e-6 of the 4-process run's (measured 1.2e-7)."""
    base = tmp_path_factory.getbasetemp()
    tp = run(base, "tp-dp2xtp2", 4, "--tp", "2")
    ckpt = tp / "ckpt" / "epoch=0-step=9.ckpt"
    assert sorted(p.name for p in ckpt.iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp", "__2_0.distcp",
                                                      "__3_0.distcp", "meta.pt"]
    same = run(tmp_path, "same-layout", 4, "--tp", "2", "--strategy", "lightning", "--resume", str(ckpt))
    assert_states_equal(torch.load(tp / "final.pt"), torch.load(same / "final.pt"))
    assert [keys_by_epoch(same, r) for r in range(4)] == [
        {e: batches[9:] if e == 0 else batches for e, batches in keys_by_epoch(tp, r).items()} for r in range(4)]

    one = run(tmp_path, "dp1xtp1", 1, "--tp", "1", "--strategy", "fsdp2", "--resume", str(ckpt), "--dump-restored")
    full = ckpt_io.load(ckpt_io.consolidate(ckpt, tmp_path / "full.ckpt"))
    assert_states_equal({"model": full["state_dict"], "optimizer": full["optimizer_states"][0]},
                        torch.load(one / "restored.pt"))
    resumed = keys_by_epoch(one, 0)
    assert len(resumed[0]) == STEPS_PER_EPOCH - 9 and len(resumed[1]) == STEPS_PER_EPOCH
    before = [k for r in (0, 2) for batch in keys_by_epoch(tp, r)[0][:9] for k in batch]
    assert sorted(before + [k for batch in resumed[0] for k in batch]) == list(range(96))
    assert report(one, 0)["global_step"] == 2 * STEPS_PER_EPOCH
    a, b = torch.load(tp / "final.pt"), torch.load(one / "final.pt")
    for name in a["model"]:
        assert torch.allclose(a["model"][name], b["model"][name], atol=1e-6, rtol=0), name


def test_streaming_training_under_tp_splits_by_data_parallel_rank_and_the_ledger_audits(tmp_path_factory):
    """DP2 x TP2 on a StreamingDataset with a SampleLedger, 2 epochs: the plan is split by data-parallel rank (the
    tensor-parallel peers trained on the same batches, the two groups on disjoint halves), and the ledger holds
    one file per data-parallel rank (world size 2), which the audit finds complete: every sample once per epoch."""
    from dltrain.audit import audit

    out = run(tmp_path_factory.getbasetemp(), "tp-stream", 4, "--tp", "2", "--train-stream")
    keys = [keys_by_epoch(out, r) for r in range(4)]
    assert keys[0] == keys[1] and keys[2] == keys[3]
    assert [report(out, r)["loader_splits"]["train"] for r in range(4)] == [[0, 2], [0, 2], [1, 2], [1, 2]]
    for epoch in (0, 1):
        assert sorted(k for batch in keys[0][epoch] + keys[2][epoch] for k in batch) == list(range(96))
    assert sorted(p.name.split("-rank")[1] for p in (out / "ledger").glob("round-*.jsonl")) == ["0.jsonl", "1.jsonl"]
    audited = audit(out)
    assert audited.ok and [r.world_size for r in audited.rounds] == [2], audited
    assert [(e.seen, e.duplicates, e.missing, e.finished) for e in audited.epochs] == [(96, 0, 0, True)] * 2
