"""WandbLogger in offline mode (no network, no key), read back from the files wandb wrote."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import dltrain
from dltrain.callbacks import ModelCheckpoint
from dltrain.errors import ConfigurationError
from dltrain.loggers import CSVLogger, WandbLogger
from tests.helpers.tasks import TinyTask, loader

from .wandb_reader import has_exit_record, read_artifacts, read_history, read_run_ids, run_start_time

FAKE_KEY = "0123456789abcdef0123456789abcdef01234567"  # 40 chars, the shape of a real key


@pytest.fixture(autouse=True)
def _offline_env(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb-data"))


def _run_files(save_dir: Path) -> list[str]:
    """The runs' ``.wandb`` files, oldest first, once complete.

    ``run.finish()`` returns before wandb's service process has written everything, so wait for the exit record.
    """
    files = glob.glob(str(save_dir / "wandb" / "offline-run-*" / "run-*.wandb"))
    deadline = time.monotonic() + 60
    for f in files:
        while not has_exit_record(f) and time.monotonic() < deadline:
            time.sleep(0.05)
    return sorted(files, key=run_start_time)


def _steps(history: list[dict]) -> list[int]:
    return [row["_step"] for row in history]


_KILLED_RUN = textwrap.dedent(
    """
    import json, os, signal, sys
    from dltrain.loggers import WandbLogger
    save_dir, state_path = sys.argv[1], sys.argv[2]
    logger = WandbLogger(project="p", save_dir=save_dir, offline=True)
    logger.log_hyperparams({"lr": 0.1})
    for step in range(1, 11):
        logger.log_metrics({"loss": float(step)}, step=step)
        if step == 5:  # the last checkpoint before the crash
            with open(state_path, "w") as f:
                json.dump(logger.state_dict(), f)
    logger.finalize("failed")  # everything logged reaches the file, then die without cleanup
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def test_offline_resume_same_run_no_duplicate_steps(tmp_path):
    save_dir = tmp_path / "runs"
    state_path = tmp_path / "state.json"
    # Output to a file, not a pipe: wandb's service process outlives the killed one and would hold a pipe open.
    with open(tmp_path / "stderr.txt", "w") as err:
        proc = subprocess.run(
            [sys.executable, "-c", _KILLED_RUN, str(save_dir), str(state_path)], stdout=err, stderr=err
        )
    assert proc.returncode == -9, (tmp_path / "stderr.txt").read_text()
    state = json.loads(state_path.read_text())
    assert state["last_step"] == 5
    assert json.loads((save_dir / "wandb" / f"dltrain-run-{state['id']}.json").read_text())["last_step"] == 10

    # The restarted process: a new logger restored from the checkpoint re-trains steps 6..15.
    logger = WandbLogger(project="p", save_dir=save_dir, offline=True)
    logger.load_state_dict(state)
    assert logger.version == state["id"]
    for step in range(6, 16):
        logger.log_metrics({"loss": step + 0.5}, step=step)
    logger.log_metrics({"val/loss": 3.0}, step=15)  # a second call at the same step (epoch metrics) is kept
    logger.finalize("success")
    assert logger.state_dict() == {"id": state["id"], "last_step": 15}

    files = _run_files(save_dir)
    assert len(files) == 2
    histories = [read_history(f) for f in files]  # oldest segment first
    assert all(read_run_ids(f) == {state["id"]} for f in files)
    steps = _steps(histories[0]) + _steps(histories[1])
    assert steps == sorted(set(steps)), steps  # monotonic, no step twice
    assert _steps(histories[0]) == list(range(1, 11))
    assert _steps(histories[1]) == list(range(11, 16))
    assert histories[1][-1]["loss"] == 15.5 and histories[1][-1]["val/loss"] == 3.0


def test_config_metrics_finish_and_no_key_on_disk(tmp_path):
    save_dir = tmp_path / "runs"
    logger = WandbLogger(project="p", name="n", save_dir=save_dir, offline=True, id="fixedid1", tags=["t"])
    csv_logger = CSVLogger(save_dir)
    assert not (save_dir / "wandb").exists()  # nothing happens before the first use
    for lg in (logger, csv_logger):  # the Trainer loops over several loggers
        lg.log_hyperparams({"lr": 0.1, "batch_size": 32})
        lg.log_metrics({"loss": 1.0}, step=1)
        lg.log_metrics({"loss": 0.5}, step=2)
    logger.log_hyperparams({"lr": 0.2})  # allow_val_change
    assert logger.experiment.config["lr"] == 0.2
    assert logger.experiment.id == "fixedid1"
    for lg in (logger, csv_logger):
        lg.finalize("success")
    (file,) = _run_files(save_dir)
    assert _steps(read_history(file)) == [1, 2]
    summary = save_dir / "wandb"
    # The fake key is in this process's environment: it must not appear in anything written.
    for path in summary.rglob("*"):
        if path.is_file():
            assert FAKE_KEY.encode() not in path.read_bytes(), path
    assert os.path.exists(csv_logger.metrics_file)


def test_no_run_until_used_and_finalize_without_run(tmp_path):
    logger = WandbLogger(save_dir=tmp_path, offline=True)
    logger.finalize("success")  # nothing started: nothing to finish
    assert not (tmp_path / "wandb").exists()
    assert logger.state_dict()["last_step"] is None


def _fit_with(logger: WandbLogger, root: Path, **checkpoint: object) -> dltrain.Trainer:
    torch.manual_seed(0)
    callbacks = [ModelCheckpoint(**checkpoint)] if checkpoint else None  # type: ignore[arg-type]
    trainer = dltrain.Trainer(accelerator="cpu", max_epochs=3, default_root_dir=root, logger=logger,
                              log_every_n_steps=1, enable_progress_bar=False, callbacks=callbacks)
    trainer.fit(TinyTask(), loader(n=32), loader(n=16))
    return trainer


@pytest.mark.parametrize("log_model", [True, "all"])
def test_log_model_logs_checkpoints_as_artifacts(tmp_path, log_model):
    """Lightning's log_model: True logs the kept checkpoints (and last) at the end, "all" each as it is written;
    a ``model`` artifact named ``checkpoint_name`` holding ``model.ckpt``, best/latest aliases, score metadata.
    With WANDB_MODE=offline (the fixture) wandb keeps them in the offline run's files."""
    logger = WandbLogger(save_dir=tmp_path, version="ckptrun1", log_model=log_model, checkpoint_name="digits",
                         add_file_policy="immutable", prefix="lit")
    trainer = _fit_with(logger, tmp_path, monitor="val/loss", save_top_k=2, filename="{epoch}")
    # Lightning's identity: name is the project, version the run id; the checkpoints under <save_dir>/<name>/<id>.
    assert (logger.name, logger.version) == ("lightning_logs", "ckptrun1")
    folder = Path(trainer.checkpoint_callback.dirpath)
    assert folder == tmp_path / "lightning_logs" / "ckptrun1" / "checkpoints"
    artifacts = [a for f in _run_files(tmp_path) for a in read_artifacts(f)]
    assert artifacts and all(a["name"] == "digits" and a["type"] == "model" for a in artifacts)
    assert all(list(a["files"]) == ["model.ckpt"] for a in artifacts)
    logged = [Path(a["local"][0]).name for a in artifacts]  # immutable: wandb points at the file itself
    kept = sorted(Path(p).name for p in trainer.checkpoint_callback.best_k_models)
    if log_model == "all":  # every checkpoint as written: each epoch's file (and last, which links the newest)
        assert {"epoch=0.ckpt", "epoch=1.ckpt", "epoch=2.ckpt"} <= set(logged)
        assert artifacts[0]["aliases"] == ["best", "latest"]  # the first checkpoint was the best one then
    else:  # at the end: the two kept ones and last, once each
        assert sorted(set(logged) - {"last.ckpt"}) == kept and len(logged) == len(set(logged))
    best = Path(trainer.checkpoint_callback.best_model_path).name
    for a, name in zip(artifacts, logged):
        if log_model is True:  # "all": best as of when it was logged
            assert a["aliases"] == (["best", "latest"] if name == best else ["latest"])
        assert a["metadata"]["original_filename"] == name
        assert a["metadata"]["ModelCheckpoint"]["monitor"] == "val/loss"
    assert any(a["metadata"]["score"] is not None for a in artifacts)
    history = [row for f in _run_files(tmp_path) for row in read_history(f)]
    assert history and all(k.startswith("lit-") for row in history for k in row if not k.startswith("_")), history


def test_log_model_true_logs_nothing_when_training_fails(tmp_path):
    logger = WandbLogger(save_dir=tmp_path, log_model=True)
    logger.log_metrics({"loss": 1.0}, step=1)

    class _Callback:
        save_top_k = 1
        kept = [(1.0, str(tmp_path / "a.ckpt"))]
        last_model_path = ""
        best_model_path = str(tmp_path / "a.ckpt")
        best_k_models = {str(tmp_path / "a.ckpt"): torch.tensor(1.0)}

    (tmp_path / "a.ckpt").write_bytes(b"weights")
    logger.after_save_checkpoint(_Callback())
    logger.finalize("failed")
    assert [a for f in _run_files(tmp_path) for a in read_artifacts(f)] == []


def test_lightning_arguments(tmp_path, monkeypatch):
    import wandb

    with pytest.raises(ConfigurationError, match="offline"):  # Lightning refuses it too
        WandbLogger(offline=True, log_model=True)
    with pytest.raises(ConfigurationError, match="add_file_policy"):
        WandbLogger(add_file_policy="copy")  # type: ignore[arg-type]
    # dir: the same as save_dir; id and version the same.
    logger = WandbLogger(dir=tmp_path / "d", id="sameid01", offline=True, anonymous=True)
    assert logger.save_dir == str(tmp_path / "d") and logger.version == "sameid01"
    assert logger._init_kwargs["anonymous"] == "allow"
    monkeypatch.setenv("WANDB_PROJECT", "from-env")
    assert WandbLogger(offline=True).name == "from-env"
    # experiment: a run the caller started is used as is and left open.
    run = wandb.init(project="mine", dir=str(tmp_path), id="userrun1", mode="offline", reinit="create_new")
    logger = WandbLogger(experiment=run, save_dir=tmp_path)
    assert logger.experiment is run and logger.version == "userrun1"
    logger.log_metrics({"loss": 2.0}, step=1)
    logger.log_metrics({"loss": 1.0}, step=2)
    logger.save()
    logger.finalize("success")
    assert logger.experiment is run  # not finished by the logger: still the caller's open run
    run.finish()
    (file,) = _run_files(tmp_path)
    assert _steps(read_history(file)) == [1, 2]
