"""MLFlowLogger (issue 22 item 5): the embedded store, metrics/params/tags/artifacts, Lightning's folders, and a
resumed run that continues the same MLflow run with each step once."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

import dltrain
from dltrain.loggers import MLFlowLogger
from tests.helpers.tasks import TinyTask, loader

pytest.importorskip("mlflow")
pytest.importorskip("sqlalchemy")


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory) -> Path:
    """An initialised, empty embedded store: MLflow creates its tables with ~100 migrations (tens of seconds on
    a loaded machine), once per session; each test starts from a copy."""
    from mlflow.tracking import MlflowClient

    folder = tmp_path_factory.mktemp("mlflow-template")
    MlflowClient(tracking_uri=f"sqlite:///{folder}/mlflow.db").search_experiments()
    return folder / "mlflow.db"


def _store(folder: Path, template: Path) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(template, folder / "mlflow.db")
    return str(folder)


def history(logger: MLFlowLogger) -> dict[str, list[tuple[int, float]]]:
    client = logger.experiment
    run = client.get_run(logger.run_id)
    return {k: sorted((m.step, m.value) for m in client.get_metric_history(logger.run_id, k))
            for k in run.data.metrics}


def _fit(root: Path, logger: MLFlowLogger, epochs: int, ckpt_path: str | None = None) -> dltrain.Trainer:
    torch.manual_seed(0)
    trainer = dltrain.Trainer(accelerator="cpu", max_epochs=epochs, default_root_dir=root, logger=logger,
                              log_every_n_steps=1)
    trainer.fit(TinyTask(), loader(n=32), loader(n=16), ckpt_path=ckpt_path)
    return trainer


def test_metrics_params_tags_and_checkpoints(tmp_path, empty_store):
    save_dir = _store(tmp_path / "mlruns", empty_store)
    logger = MLFlowLogger(experiment_name="exp", run_name="first", tags={"team": "a"}, save_dir=save_dir,
                          log_model=True)
    trainer = _fit(tmp_path, logger, epochs=2)
    assert logger.tracking_uri.startswith("sqlite:///") and logger.tracking_uri.endswith("mlruns/mlflow.db")
    client = logger.experiment
    run = client.get_run(logger.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "first"
    assert run.data.tags["team"] == "a"
    # the task's saved hyperparameters, as Lightning sends them (no Trainer settings: they broke hparams.yaml reloads)
    assert run.data.params["lr"] == "0.05" and not any(k.startswith("trainer/") for k in run.data.params)
    metrics = history(logger)
    assert [s for s, _ in metrics["train/loss"]] == list(range(1, 9))
    assert [s for s, _ in metrics["val/loss"]] == [4, 8]
    # Lightning's checkpoint folder for an MLflow logger: <save_dir>/<experiment id>/<run id>/checkpoints.
    folder = Path(save_dir) / logger.experiment_id / logger.run_id / "checkpoints"
    assert trainer.checkpoint_callback.dirpath == folder
    assert sorted(p.name for p in folder.iterdir()) == ["epoch=1-step=8.ckpt", "last.ckpt"]
    # log_model=True: the kept checkpoints are artifacts at the end, with their metadata.
    artifacts = {a.path for a in client.list_artifacts(logger.run_id)}
    assert {"epoch=1-step=8", "last"} <= artifacts
    inside = {Path(a.path).name for a in client.list_artifacts(logger.run_id, "epoch=1-step=8")}
    assert inside == {"epoch=1-step=8.ckpt", "metadata.yaml", "aliases.txt"}


def test_a_resumed_fit_continues_the_run_and_logs_each_step_once(tmp_path, empty_store):
    reference = MLFlowLogger(experiment_name="ref", save_dir=_store(tmp_path / "ref", empty_store))
    _fit(tmp_path / "ref", reference, epochs=3)

    save_dir = _store(tmp_path / "run", empty_store)
    first = MLFlowLogger(experiment_name="exp", save_dir=save_dir)
    _fit(tmp_path / "run", first, epochs=1)
    resumed = MLFlowLogger(experiment_name="exp", save_dir=save_dir)
    _fit(tmp_path / "run", resumed, epochs=3, ckpt_path="last")
    assert resumed.run_id == first.run_id
    assert len(resumed.experiment.search_runs([resumed.experiment_id])) == 1
    assert resumed.experiment.get_run(resumed.run_id).info.status == "FINISHED"
    assert history(resumed) == history(reference)


def test_metric_names_mlflow_refuses_are_cleaned_with_a_warning(tmp_path, empty_store):
    logger = MLFlowLogger(save_dir=_store(tmp_path / "m", empty_store), prefix="p")
    with pytest.warns(RuntimeWarning, match="'p-acc@1' is logged as 'p-acc1'"):
        logger.log_metrics({"acc@1": 0.5}, step=3)
    assert history(logger) == {"p-acc1": [(3, 0.5)]}
