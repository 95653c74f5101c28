"""The CSV log on the S3 test server: run folders claimed by a conditional PUT (two loggers never share a version),
the whole file rewritten per flush, and a resumed logger that writes each row once (`ResumeFilter`)."""

from __future__ import annotations

import csv

import yaml

from dltrain import _storage
from dltrain.loggers import CSVLogger


def _rows(s3, key):
    return list(csv.DictReader(s3.read(key).decode().splitlines()))


def test_conditional_create_wins_once(s3):
    url = s3.url("claims/marker")
    assert _storage.create(url, b"a") is True
    assert _storage.create(url, b"b") is False
    assert s3.read("claims/marker") == b"a"


def test_csv_logger_on_the_store_claims_versions_and_resumes_without_repeating_rows(s3):
    first, second = CSVLogger(s3.url("runs")), CSVLogger(s3.url("runs"))
    first.log_hyperparams({"lr": 0.1})
    second.log_metrics({"a": 1.0}, step=0)  # claims its folder only now: the next number after first's
    assert (first.version, second.version) == (0, 1)
    assert first.log_dir == s3.url("runs/lightning_logs/version_0")
    for step in range(4):
        first.log_metrics({"loss": float(step)}, step=step)
    first.log_metrics({"val": 9.0}, step=3)  # a second row at the same step, with a new column
    first.save()
    key = "runs/lightning_logs/version_0/metrics.csv"
    assert [(r["step"], r["loss"], r["val"]) for r in _rows(s3, key)] == [
        ("0", "0.0", ""), ("1", "1.0", ""), ("2", "2.0", ""), ("3", "3.0", ""), ("3", "", "9.0")]
    assert not any(k.endswith(".tmp") for k in s3.objects("runs"))

    # A run resumed from a checkpoint taken at step 1 logs steps 2.. again: what is on the store is kept once,
    # what the killed run had not written (step 3's "val2") is written.
    resumed = CSVLogger(s3.url("runs"))
    resumed.load_state_dict(first.state_dict())
    resumed.log_hyperparams({"batch": 8})
    for step in range(2, 5):
        resumed.log_metrics({"loss": float(step)}, step=step)
    resumed.log_metrics({"val": 9.0}, step=3)
    resumed.log_metrics({"val2": 1.0}, step=4)
    resumed.save()
    rows = [(r["step"], r["loss"], r["val"], r["val2"]) for r in _rows(s3, key)]
    assert rows == [("0", "0.0", "", ""), ("1", "1.0", "", ""), ("2", "2.0", "", ""), ("3", "3.0", "", ""),
                    ("3", "", "9.0", ""), ("4", "4.0", "", ""), ("4", "", "", "1.0")], rows
    assert yaml.safe_load(s3.read("runs/lightning_logs/version_0/hparams.yaml")) == {"batch": 8, "lr": 0.1}
    assert CSVLogger(s3.url("runs")).version == 2


def test_sample_ledger_on_the_store_uploads_its_file_and_leaves_no_local_copy(s3, tmp_path, monkeypatch, request):
    """The ledger is written locally and uploaded whole; once the fit is over, the local copy is gone."""
    import shutil
    import tempfile
    from pathlib import Path

    import torch

    import dltrain
    from dltrain.audit import audit
    from dltrain.callbacks import SampleLedger
    from dltrain.data import StreamingDataset
    from tests.helpers.shards import make_shards

    # Where the ledger's local copy goes. A short folder: the loader workers' sockets are made under it too, and a
    # folder under tmp_path made them too long for Linux, which hung this test (tests/data/test_worker_sockets.py).
    scratch = Path(tempfile.mkdtemp(prefix="ledger-", dir="/tmp"))
    request.addfinalizer(lambda: shutil.rmtree(scratch, ignore_errors=True))
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))

    class Task(dltrain.Task):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Linear(3, 1)

        def training_step(self, batch, batch_idx):
            return self.net(batch["x"]).pow(2).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    shards = make_shards(tmp_path / "shards", num_shards=3, min_size=4, max_size=6, seed=3)
    data = StreamingDataset(shards.pattern, batch_size=4, seed=5,
                            map=lambda s: {"x": torch.tensor(s["npy"], dtype=torch.float32)})
    trainer = dltrain.Trainer(accelerator="cpu", max_epochs=2, default_root_dir=str(tmp_path / "run"), logger=False,
                              enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                              callbacks=[SampleLedger(dirpath=s3.url("ledger"))])
    trainer.fit(Task(), data)
    assert [k for k in s3.objects("ledger") if k.endswith(".jsonl")], s3.objects("ledger")
    assert audit(s3.url("ledger")).ok
    left = sorted(p.name for p in scratch.glob("dltrain-ledger-*"))
    assert left == [], f"the ledger's local copy was left behind: {left}"
