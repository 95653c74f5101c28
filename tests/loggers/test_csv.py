from __future__ import annotations

import csv
import os

import yaml

from dltrain.loggers import CSVLogger, Logger


def _rows(path: str) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_lazy_creation_and_versions(tmp_path):
    a = CSVLogger(tmp_path, name="exp")
    assert isinstance(a, Logger)
    assert not (tmp_path / "exp").exists()  # constructing costs nothing (every rank may do it)
    a.log_metrics({"loss": 1.0}, step=1)
    assert a.log_dir == str(tmp_path / "exp" / "version_0")
    b = CSVLogger(tmp_path, name="exp")
    b.log_metrics({"loss": 2.0}, step=1)
    assert b.version == 1
    assert os.path.exists(tmp_path / "exp" / "version_1" / "metrics.csv")
    c = CSVLogger(tmp_path, name="exp", version="custom")
    c.log_metrics({"loss": 3.0}, step=1)
    assert os.path.exists(tmp_path / "exp" / "custom" / "metrics.csv")


def test_columns_appear_later_and_hparams(tmp_path):
    logger = CSVLogger(tmp_path)
    logger.log_hyperparams({"lr": 0.1, "layers": [1, 2], "obj": object()})
    logger.log_metrics({"train/loss": 1.5}, step=10)
    logger.log_metrics({"train/loss": 1.25, "lr": 0.1}, step=20)
    logger.log_metrics({"val/acc": 0.5}, step=20)
    logger.finalize("success")
    rows = _rows(logger.metrics_file)
    assert list(rows[0]) == ["lr", "step", "train/loss", "val/acc"]  # sorted, "step" among them, as Lightning's
    assert rows == [
        {"step": "10", "train/loss": "1.5", "lr": "", "val/acc": ""},
        {"step": "20", "train/loss": "1.25", "lr": "0.1", "val/acc": ""},
        {"step": "20", "train/loss": "", "lr": "", "val/acc": "0.5"},
    ]
    hparams = yaml.safe_load((tmp_path / "lightning_logs" / "version_0" / "hparams.yaml").read_text())
    assert hparams["lr"] == 0.1 and hparams["layers"] == [1, 2] and "object" in hparams["obj"]


def test_hparams_yaml_is_written_empty_when_nothing_was_logged(tmp_path):
    """Lightning's CSV logger writes hparams.yaml at every save, ``{}`` when no hyperparameters were logged (a task
    without save_hyperparameters); dltrain wrote none once it stopped sending its own Trainer settings."""
    logger = CSVLogger(tmp_path)
    logger.log_metrics({"train/loss": 1.5}, step=1)
    logger.save()
    assert yaml.safe_load((tmp_path / "lightning_logs" / "version_0" / "hparams.yaml").read_text()) == {}
    logger.log_hyperparams({"lr": 0.1})  # merged into it
    logger.finalize("success")
    assert yaml.safe_load((tmp_path / "lightning_logs" / "version_0" / "hparams.yaml").read_text()) == {"lr": 0.1}


def test_a_file_of_an_older_dltrain_with_step_first_is_continued_in_its_own_column_order(tmp_path):
    """metrics.csv of an older dltrain had "step" first and columns in order of appearance; a resumed run appends
    to it under that header (a DictWriter with another order would put values under the wrong columns)."""
    folder = tmp_path / "lightning_logs" / "version_0"
    folder.mkdir(parents=True)
    (folder / "metrics.csv").write_text("step,train/loss,epoch\n1,0.5,0\n")
    logger = CSVLogger(tmp_path)
    logger.load_state_dict({"version": 0})
    logger.log_metrics({"train/loss": 0.25, "epoch": 0.0}, step=2)
    logger.finalize("success")
    assert (folder / "metrics.csv").read_text().splitlines() == ["step,train/loss,epoch", "1,0.5,0", "2,0.25,0.0"]


def test_buffering_flushes_on_save(tmp_path):
    logger = CSVLogger(tmp_path, flush_every=100)
    logger.log_metrics({"a": 1.0}, step=1)
    assert not os.path.exists(logger.metrics_file)
    logger.save()
    assert len(_rows(logger.metrics_file)) == 1


def test_resume_same_folder_without_duplicate_steps(tmp_path):
    first = CSVLogger(tmp_path)
    for step in range(1, 11):
        first.log_metrics({"loss": float(step)}, step=step)
        if step == 5:
            checkpoint = first.state_dict()  # last checkpoint; the run is then killed at step 10
    assert checkpoint == {"version": 0}

    # A new process, a new logger (even another version would be picked by default) restored from the checkpoint.
    CSVLogger(tmp_path).log_metrics({"other": 0.0}, step=1)  # an unrelated run takes version_1
    second = CSVLogger(tmp_path)
    second.load_state_dict(checkpoint)
    for step in range(6, 16):  # re-trains 6..10, then continues
        second.log_metrics({"loss": float(step) + 0.5, "new": 1.0}, step=step)
    second.finalize("success")

    assert second.log_dir == first.log_dir
    rows = _rows(first.metrics_file)
    steps = [int(r["step"]) for r in rows]
    assert steps == list(range(1, 16))
    assert rows[9]["loss"] == "10.0" and rows[10]["loss"] == "11.5" and rows[10]["new"] == "1.0"
    assert rows[0]["new"] == ""
