"""After a real ``kill -9`` and ``fit(ckpt_path="last")``, every logger's history equals the uninterrupted run's
(issue 22 item 5): CSV, TensorBoard, offline wandb and MLflow, at random kill points and checkpoint intervals.

The killed run logged some steps after its last checkpoint: those that reached the disk must not be logged again,
and those that did not (CSV rows buffered, wandb's offline rows not committed, TensorBoard events not flushed) must
be. Kill points and intervals come from ``DLTRAIN_TEST_SEED`` (the failure message says how to replay).
"""

from __future__ import annotations

import csv
import glob
import os
import random
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.helpers.distributed import REPO

from .test_wandb import FAKE_KEY
from .wandb_reader import read_history, run_start_time

pytest.importorskip("mlflow")
pytest.importorskip("tensorboard")

_TRAIN = textwrap.dedent(
    """
    import os, signal, sys
    import torch
    import dltrain
    from dltrain.callbacks import ModelCheckpoint
    from dltrain.loggers import CSVLogger, MLFlowLogger, TensorBoardLogger, WandbLogger
    from tests.helpers.tasks import TinyTask, loader

    root, kill_at, resume, every = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "resume", int(sys.argv[4])

    class Kill(dltrain.Callback):  # runs before ModelCheckpoint: the kill comes before that step's checkpoint
        def on_train_batch_end(self, trainer, task, outputs, batch, batch_idx):
            if trainer.global_step == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)

    torch.manual_seed(0)
    loggers = [CSVLogger(root, flush_every=1000), TensorBoardLogger(root, name="tb", flush_secs=3600),
               WandbLogger(project="p", save_dir=root, offline=True, id="killrun"),
               MLFlowLogger(experiment_name="kill", save_dir=os.path.join(root, "mlruns"))]
    saving = ModelCheckpoint(dirpath=os.path.join(root, "ckpt"), every_n_train_steps=every, every_n_epochs=1)
    trainer = dltrain.Trainer(accelerator="cpu", max_epochs=2, log_every_n_steps=1, logger=loggers,
                              default_root_dir=root, callbacks=[Kill(), saving])
    trainer.fit(TinyTask(dropout=0.2), loader(n=64), loader(n=16), ckpt_path="last" if resume else None)
    """
)
STEPS = 16  # 2 epochs of 8 batches


def _train(root: Path, kill_at: int, resume: bool, tmp_path: Path, every: int) -> int:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)]),
        "WANDB_MODE": "offline", "WANDB_API_KEY": FAKE_KEY, "WANDB_SILENT": "true",
        "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config"), "WANDB_CACHE_DIR": str(tmp_path / "wandb-cache"),
        "WANDB_DATA_DIR": str(tmp_path / "wandb-data"),
    }
    # Each run its own wandb service, as separate jobs have: WANDB_SERVICE, set in this process by any earlier
    # in-process wandb run (another test in this worker), would make both runs clients of one service, which still
    # holds the killed run's id ("run ID killrun is in use", seen once in the suite).
    env.pop("WANDB_SERVICE", None)
    # Output to a file, not a pipe: wandb's service process outlives the killed one and would hold a pipe open.
    with open(tmp_path / "out.txt", "a") as out:
        proc = subprocess.run([sys.executable, "-c", _TRAIN, str(root), str(kill_at), "resume" if resume else "new",
                               str(every)], stdout=out, stderr=out, env=env, cwd=REPO, timeout=600)
    return proc.returncode


def _new_root(tmp_path: Path, name: str, store: Path) -> Path:
    root = tmp_path / name
    (root / "mlruns").mkdir(parents=True)
    shutil.copy(store, root / "mlruns" / "mlflow.db")
    return root


def histories(root: Path) -> dict[str, object]:
    """What each logger holds, in the form its users read it."""
    with open(root / "lightning_logs" / "version_0" / "metrics.csv", newline="") as f:
        csv_rows = [{k: v for k, v in row.items() if v != ""} for row in csv.DictReader(f)]

    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    tb: list[tuple[str, int, float]] = []
    for path in glob.glob(str(root / "tb" / "version_0" / "*tfevents*")):
        for event in EventFileLoader(path).Load():
            tb += [(v.tag, event.step, v.simple_value) for v in event.summary.value if v.HasField("simple_value")]

    wandb_rows: list[dict] = []
    for f in sorted(glob.glob(str(root / "wandb" / "offline-run-*" / "run-killrun.wandb")), key=run_start_time):
        wandb_rows += [{k: v for k, v in row.items() if not k.startswith("_") or k == "_step"}
                       for row in read_history(f)]

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlruns' / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("kill").experiment_id])
    mlflow = {k: sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, k))
              for k in run.data.metrics}
    return {"csv": csv_rows, "tensorboard": sorted(tb), "wandb": wandb_rows, "mlflow": mlflow}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    from mlflow.tracking import MlflowClient

    folder = tmp_path_factory.mktemp("mlflow-template")
    MlflowClient(tracking_uri=f"sqlite:///{folder}/mlflow.db").search_experiments()
    return folder / "mlflow.db"


@pytest.fixture(scope="module")
def reference(tmp_path_factory, store) -> dict[str, object]:
    tmp = tmp_path_factory.mktemp("reference")
    root = _new_root(tmp, "run", store)
    assert _train(root, kill_at=-1, resume=False, tmp_path=tmp, every=4) == 0, (tmp / "out.txt").read_text()
    return histories(root)


@pytest.mark.slow
@pytest.mark.timeout(1800)  # 3 training processes with 4 loggers (wandb commits by finishing the run)
@pytest.mark.parametrize("trial", [0])
def test_killed_and_resumed_history_equals_the_uninterrupted_one(tmp_path, store, reference, random_seed, trial):
    rng = random.Random(random_seed)
    every = rng.choice([0, 3, 4, 5])
    # After the first checkpoint (a kill before it leaves nothing to resume: the next run starts a new one).
    kill_at = rng.randint((every or STEPS // 2) + 1, STEPS - 1)
    where = f"kill at step {kill_at}, checkpoints every {every} steps and at epoch ends"
    root = _new_root(tmp_path, "run", store)
    assert _train(root, kill_at, resume=False, tmp_path=tmp_path, every=every) == -9, (tmp_path / "out.txt").read_text()
    assert _train(root, -1, resume=True, tmp_path=tmp_path, every=every) == 0, (tmp_path / "out.txt").read_text()
    got = histories(root)
    # The checkpoint interval does not change what is logged: the reference (every=4) serves every trial.
    for name in ("csv", "tensorboard", "wandb", "mlflow"):
        assert got[name] == reference[name], f"{name} differs ({where})"
