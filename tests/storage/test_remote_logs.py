"""The CSV log on the S3 test server: run folders claimed by a conditional PUT (two loggers never share a version),
the whole file rewritten per flush, and a resumed logger that writes each row once (`ResumeFilter`)."""

from __future__ import annotations

import csv
import json

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
    assert json.loads(s3.read("runs/lightning_logs/version_0/hparams.json")) == {"batch": 8, "lr": 0.1}
    assert CSVLogger(s3.url("runs")).version == 2
