"""What a checkpoint covers is also in the loggers' files after a real ``kill -9`` (offline wandb and CSV)."""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.helpers.distributed import REPO

from .test_wandb import FAKE_KEY
from .wandb_reader import read_history, run_start_time

_TRAIN = textwrap.dedent(
    """
    import os, signal, sys
    import torch
    import dltrain
    from dltrain.callbacks import ModelCheckpoint
    from dltrain.loggers import CSVLogger, WandbLogger
    from tests.helpers.tasks import TinyTask, loader

    root, kill_at, resume, every = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "resume", int(sys.argv[4])

    class Kill(dltrain.Callback):  # runs before ModelCheckpoint: the kill comes before that step's checkpoint
        def on_train_batch_end(self, trainer, task, outputs, batch, batch_idx):
            if trainer.global_step == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)

    torch.manual_seed(0)
    loggers = [CSVLogger(root, flush_every=1000), WandbLogger(project="p", save_dir=root, offline=True, id="killrun")]
    trainer = dltrain.Trainer(
        accelerator="cpu", max_epochs=3, log_every_n_steps=1, enable_progress_bar=False, logger=loggers,
        default_root_dir=root,
        callbacks=[Kill(), ModelCheckpoint(dirpath=os.path.join(root, "ckpt"), every_n_epochs=1, every_n_train_steps=every)],
    )
    trainer.fit(TinyTask(), loader(n=64), loader(n=16), ckpt_path="last" if resume else None)
    """
)


def _train(root: Path, kill_at: int, resume: bool, tmp_path: Path, every: int = 4) -> int:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)]),
        "WANDB_MODE": "offline", "WANDB_API_KEY": FAKE_KEY, "WANDB_SILENT": "true",
        "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config"), "WANDB_CACHE_DIR": str(tmp_path / "wandb-cache"),
        "WANDB_DATA_DIR": str(tmp_path / "wandb-data"),
    }
    # Output to a file, not a pipe: wandb's service process outlives the killed one and would hold a pipe open.
    with open(tmp_path / "out.txt", "a") as out:
        proc = subprocess.run([sys.executable, "-c", _TRAIN, str(root), str(kill_at), "resume" if resume else "new",
                               str(every)], stdout=out, stderr=out, env=env, cwd=REPO, timeout=300)
    return proc.returncode


def _wandb_rows(root: Path) -> list[dict]:
    """History rows of every segment of the run (several ``offline-run-*`` folders), oldest segment first."""
    rows: list[dict] = []
    for f in sorted(glob.glob(str(root / "wandb" / "offline-run-*" / "run-killrun.wandb")), key=run_start_time):
        rows += read_history(f)
    return rows


def _wandb_steps(root: Path) -> list[int]:
    return [row["_step"] for row in _wandb_rows(root)]


def _csv_steps(root: Path) -> set[int]:
    lines = (root / "lightning_logs" / "version_0" / "metrics.csv").read_text().splitlines()[1:]
    return {int(line.split(",")[0]) for line in lines}


def test_rows_logged_before_the_last_checkpoint_survive_a_kill(tmp_path):
    root = tmp_path / "run"
    # 8 steps per epoch, checkpoints every 4 steps: killed at step 11, after the checkpoint of step 8.
    assert _train(root, kill_at=11, resume=False, tmp_path=tmp_path) == -9, (tmp_path / "out.txt").read_text()
    # Rows of steps 1..7 were logged before the step-8 checkpoint: on disk, in wandb's transaction log and in the
    # CSV file (flush_every=1000 buffers its rows). Step 8's own row comes after the checkpoint (the step values
    # are sent after the batch-end callbacks).
    assert set(range(1, 8)) <= set(_wandb_steps(root))
    assert set(range(1, 8)) <= _csv_steps(root)

    # The resumed run continues the same wandb run id and CSV version; every step appears at most once.
    assert _train(root, kill_at=-1, resume=True, tmp_path=tmp_path) == 0, (tmp_path / "out.txt").read_text()
    steps = _wandb_steps(root)
    assert len(steps) == len(set(steps)), steps
    lost = set(range(1, 25)) - set(steps)
    # At most the steps after the last checkpoint are missing (the killed run logged them, the resumed run skips
    # them so as not to repeat a step).
    assert lost <= set(range(8, 12)), sorted(lost)
    assert _csv_steps(root) == set(range(1, 25))


def test_an_epoch_end_checkpoint_keeps_its_step_whole_in_one_row(tmp_path):
    # Epoch-end checkpoints: step 8's validation metrics come before the checkpoint, its epoch aggregates after.
    root = tmp_path / "run"
    assert _train(root, kill_at=11, resume=False, tmp_path=tmp_path, every=0) == -9, (tmp_path / "out.txt").read_text()
    rows = _wandb_rows(root)
    steps = [row["_step"] for row in rows]
    assert set(range(1, 9)) <= set(steps) and len(steps) == len(set(steps)), steps  # one row per step
    step8 = next(row for row in rows if row["_step"] == 8)
    assert {"val/loss", "train/loss_step"} <= set(step8) or {"val/loss", "train/loss"} <= set(step8), step8
    assert _train(root, kill_at=-1, resume=True, tmp_path=tmp_path, every=0) == 0, (tmp_path / "out.txt").read_text()
    steps = _wandb_steps(root)
    assert len(steps) == len(set(steps)) and set(steps) >= set(range(1, 9)) | set(range(12, 25)), steps
