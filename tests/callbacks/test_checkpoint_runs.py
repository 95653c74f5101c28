"""Checkpoints belong to their run: a callback deletes only its own files, reruns never replace an earlier run's
checkpoints, resuming continues the run it resumes, no stale temporaries, and ``last``/``best`` always name a file."""

from __future__ import annotations

import csv
import hashlib
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from tests.helpers.distributed import REPO
from tests.helpers.tasks import CountEpochs, TinyTask, loader, quiet_trainer

import dltrain
from dltrain import checkpoint as ckpt_io
from dltrain.callbacks import ModelCheckpoint
from dltrain.errors import ConfigurationError

# loader(n=32) with batches of 8: 4 optimizer steps per epoch.


def _fit(root, *, epochs, callbacks=(), ckpt_path=None, logger=False, task=None):
    torch.manual_seed(0)
    trainer = quiet_trainer(root, max_epochs=epochs, callbacks=list(callbacks), enable_checkpointing=True,
                            logger=logger)
    trainer.fit(task or TinyTask(), loader(n=32), loader(n=16), ckpt_path=ckpt_path)
    return trainer


def _files(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (relative name -> content hash)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _ckpts(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*.ckpt"))


# ---------------------------------------------------------------------- a callback deletes only its own files
def test_resuming_from_another_runs_checkpoint_leaves_its_files_alone(tmp_path):
    source = tmp_path / "S"
    _fit(tmp_path / "s_root", epochs=4, callbacks=[ModelCheckpoint(dirpath=source, save_top_k=3)])
    before = _files(source)
    assert sorted(before) == ["epoch=1-step=8.ckpt", "epoch=2-step=12.ckpt", "epoch=3-step=16.ckpt", "last.ckpt"]

    cb = ModelCheckpoint(dirpath=tmp_path / "T", save_top_k=1)
    trainer = _fit(tmp_path / "t_root", epochs=7, callbacks=[cb], ckpt_path=source / "epoch=2-step=12.ckpt")

    assert trainer.global_step == 28
    assert _files(source) == before, "the other run's checkpoints were removed or replaced"
    assert _ckpts(tmp_path / "T") == ["epoch=6-step=28.ckpt", "last.ckpt"]
    assert [Path(p).parent for _, p in cb.kept] == [tmp_path / "T"]


def test_kept_entries_outside_the_folder_are_never_removed(tmp_path):
    # A state naming files elsewhere (a hand-edited or copied checkpoint): they are dropped, not deleted.
    outside = tmp_path / "elsewhere.ckpt"
    outside.write_bytes(b"not ours")
    cb = ModelCheckpoint(dirpath=tmp_path / "c", save_top_k=1)
    cb.load_state_dict({"kept": [[1e9, str(outside)]], "last_path": str(outside)})
    _fit(tmp_path, epochs=2, callbacks=[cb])
    assert outside.read_bytes() == b"not ours"
    assert cb.best_model_path == str(tmp_path / "c" / "epoch=1-step=8.ckpt")
    assert cb.last_model_path == str(tmp_path / "c" / "last.ckpt")


# ---------------------------------------------------------------------- a rerun keeps the earlier run's checkpoints
def test_same_command_twice_keeps_both_runs_checkpoints(tmp_path):
    _fit(tmp_path, epochs=2, logger=True)
    first = _files(tmp_path / "lightning_logs" / "version_0" / "checkpoints")
    t2 = _fit(tmp_path, epochs=2, logger=True)
    assert _ckpts(tmp_path) == [
        "lightning_logs/version_0/checkpoints/epoch=1-step=8.ckpt", "lightning_logs/version_0/checkpoints/last.ckpt",
        "lightning_logs/version_1/checkpoints/epoch=1-step=8.ckpt", "lightning_logs/version_1/checkpoints/last.ckpt",
    ]
    assert _files(tmp_path / "lightning_logs" / "version_0" / "checkpoints") == first
    # Lightning's layout: <save_dir>/<name>/version_N/checkpoints, next to the logger's files of the same run.
    assert t2.checkpoint_callback.dirpath == Path(t2.logger.log_dir) / "checkpoints"


def test_same_command_twice_without_logger_keeps_both_runs_checkpoints(tmp_path):
    # Lightning's folder without a logger, <default_root_dir>/checkpoints: the second run's names get "-v1".
    _fit(tmp_path, epochs=2)
    first = _files(tmp_path / "checkpoints")
    _fit(tmp_path, epochs=2)
    assert _ckpts(tmp_path) == [
        "checkpoints/epoch=1-step=8-v1.ckpt", "checkpoints/epoch=1-step=8.ckpt",
        "checkpoints/last-v1.ckpt", "checkpoints/last.ckpt",
    ]
    files = _files(tmp_path / "checkpoints")
    assert {k: files[k] for k in first} == first


def test_same_explicit_folder_twice_adds_versions_instead_of_replacing(tmp_path):
    folder = tmp_path / "c"
    _fit(tmp_path, epochs=2, callbacks=[ModelCheckpoint(dirpath=folder)])
    first = _files(folder)
    cb = ModelCheckpoint(dirpath=folder)
    _fit(tmp_path, epochs=2, callbacks=[cb])
    files = _files(folder)
    assert {k: files[k] for k in first} == first
    assert sorted(files) == ["epoch=1-step=8-v1.ckpt", "epoch=1-step=8.ckpt", "last-v1.ckpt", "last.ckpt"]
    assert cb.last_model_path == str(folder / "last-v1.ckpt")
    # "last" is the newest: the second run's.
    t3 = quiet_trainer(tmp_path, max_epochs=3, callbacks=[ModelCheckpoint(dirpath=folder)],
                       enable_checkpointing=True)
    from dltrain import _checkpointing
    assert _checkpointing.resolve(t3, "last") == folder / "last-v1.ckpt"


# ---------------------------------------------------------------------- resuming continues the run it resumes
def test_resume_last_continues_the_newest_run_in_its_folder_and_log_version(tmp_path):
    _fit(tmp_path, epochs=2, logger=True)  # version_0
    v0 = _files(tmp_path / "lightning_logs" / "version_0")
    _fit(tmp_path, epochs=1, logger=True)  # version_1: the most recent run
    counter = CountEpochs()
    t3 = _fit(tmp_path, epochs=3, logger=True, ckpt_path="last", callbacks=[counter])
    assert counter.epochs == [1, 2]  # resumed after version_1's only epoch
    assert t3.global_step == 12
    assert sorted(p.name for p in (tmp_path / "lightning_logs").iterdir()) == ["version_0", "version_1"]
    assert t3.logger.log_dir == str(tmp_path / "lightning_logs" / "version_1")
    assert t3.checkpoint_callback.dirpath == tmp_path / "lightning_logs" / "version_1" / "checkpoints"
    assert _ckpts(tmp_path / "lightning_logs" / "version_1") == ["checkpoints/epoch=2-step=12.ckpt", "checkpoints/last.ckpt"]
    assert _files(tmp_path / "lightning_logs" / "version_0") == v0
    with open(tmp_path / "lightning_logs" / "version_1" / "metrics.csv", newline="") as f:
        steps = [int(row["step"]) for row in csv.DictReader(f)]  # by name: the columns are sorted, as Lightning's
    assert max(steps) == 12


def test_resume_last_without_logger_continues_the_newest_run_folder(tmp_path):
    _fit(tmp_path, epochs=2)
    _fit(tmp_path, epochs=1)
    t3 = _fit(tmp_path, epochs=3, ckpt_path="last")
    assert t3.global_step == 12
    assert t3.checkpoint_callback.dirpath == tmp_path / "checkpoints"
    # The resumed run continues the second run's files (its "-v1" names), the first run's stay as they were.
    assert _ckpts(tmp_path) == [
        "checkpoints/epoch=1-step=8.ckpt", "checkpoints/epoch=2-step=12.ckpt",
        "checkpoints/last-v1.ckpt", "checkpoints/last.ckpt",
    ]


def test_resume_last_finds_checkpoints_of_the_old_layout(tmp_path):
    # <default_root_dir>/checkpoints/version_0/last.ckpt, dltrain's earlier folder of runs without a logger.
    trainer = _fit(tmp_path / "old", epochs=2,
                   callbacks=[ModelCheckpoint(dirpath=tmp_path / "checkpoints" / "version_0")])
    assert trainer.global_step == 8
    t2 = _fit(tmp_path, epochs=3, ckpt_path="last")
    assert t2.global_step == 12


# ---------------------------------------------------------------------- leftovers
def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temporaries_of_dead_processes_are_removed_at_start(tmp_path):
    folder = tmp_path / "c"
    folder.mkdir()
    dead = _dead_pid()
    host = socket.gethostname()
    stale = [folder / f".epoch=0-step=4.ckpt.tmp-{dead}", folder / f".last.ckpt.tmp-{host}-{dead}"]
    alive = folder / f".epoch=0-step=4.ckpt.tmp-{host}-{os.getppid()}"  # a live process may be writing it
    other_host = folder / f".last.ckpt.tmp-elsewhere.example-{dead}"  # cannot tell whether it is alive there
    unrelated = folder / ".notes.tmp-12"
    for p in [*stale, alive, other_host]:
        p.write_bytes(b"partial")
    unrelated.write_text("not a checkpoint temporary")
    _fit(tmp_path, epochs=1, callbacks=[ModelCheckpoint(dirpath=folder)])
    left = sorted(p.name for p in folder.iterdir())
    assert left == sorted([alive.name, other_host.name, unrelated.name, "epoch=0-step=4.ckpt", "last.ckpt"])


_KILLED_WRITER = textwrap.dedent(
    """
    import sys, time, torch
    from dltrain import checkpoint as ckpt_io

    def slow_save(obj, f):
        f.write(b"half a checkpoint")
        f.flush()
        print("writing", flush=True)
        time.sleep(60)

    torch.save = slow_save
    ckpt_io.save_atomic({"state_dict": {}}, sys.argv[1])
    """
)


def test_a_kill_during_a_checkpoint_write_leaves_no_temporary_after_the_next_start(tmp_path):
    folder = tmp_path / "c"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(folder / "epoch=0-step=4.ckpt")],
                            stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert [p.name for p in folder.iterdir()] == [f".epoch=0-step=4.ckpt.tmp-{socket.gethostname()}-{proc.pid}"]
    _fit(tmp_path, epochs=1, callbacks=[ModelCheckpoint(dirpath=folder)])
    assert sorted(p.name for p in folder.iterdir()) == ["epoch=0-step=4.ckpt", "last.ckpt"]


class _CheckLast(dltrain.Callback):
    """After every checkpoint (read at the next batch/epoch start and at the end): last_path names a file."""

    def __init__(self, cb):
        self.cb = cb
        self.checked = 0

    def _check(self):
        if self.cb.last_path is not None:
            assert os.path.isfile(self.cb.last_path), self.cb.last_path
            self.checked += 1

    def on_train_batch_start(self, trainer, task, batch, batch_idx):
        self._check()

    def on_fit_end(self, trainer, task):
        self._check()


def test_last_path_always_names_an_existing_file(tmp_path):
    # mode="max" on a falling loss: after the first save nothing improves, so most saves only update "last".
    cb = ModelCheckpoint(dirpath=tmp_path / "c", monitor="val/loss", mode="max", save_top_k=1)
    checker = _CheckLast(cb)
    _fit(tmp_path, epochs=6, callbacks=[checker, cb])
    assert checker.checked >= 5 * 4
    assert cb.last_path == str(tmp_path / "c" / "last.ckpt")
    state = ckpt_io.load(tmp_path / "c" / "last.ckpt")["callbacks"][cb.state_key]
    assert os.path.isfile(state["last_path"])
    assert all(os.path.isfile(p) for _, p in state["kept"])
    assert not [p.name for p in (tmp_path / "c").iterdir() if p.name.startswith(".")]


# ---------------------------------------------------------------------- best/last as in Lightning
class _ValLosses(dltrain.Callback):
    def __init__(self):
        self.values: dict[int, float] = {}

    def on_validation_epoch_end(self, trainer, task):
        if trainer.sanity_checking:
            return
        self.values[trainer.current_epoch] = float(trainer.callback_metrics["val/loss"])


def test_best_and_last_attributes_have_lightnings_meaning(tmp_path):
    folder = tmp_path / "c"
    # A metric name with "/" makes a sub-folder, as in Lightning ("epoch=1-val/loss=0.1234.ckpt").
    cb = ModelCheckpoint(dirpath=folder, monitor="val/loss", mode="min", save_top_k=2,
                         filename="{epoch}-{val/loss:.4f}")
    assert (cb.best_model_path, cb.last_model_path, cb.best_model_score, cb.best_k_models) == ("", "", None, {})
    losses = _ValLosses()
    _fit(tmp_path, epochs=5, callbacks=[losses, cb])
    best_two = sorted(losses.values.items(), key=lambda kv: kv[1])[:2]
    names = {f"epoch={e}-val/loss={v:.4f}.ckpt": v for e, v in best_two}
    assert {str(Path(p).relative_to(folder)): pytest.approx(float(s)) for p, s in cb.best_k_models.items()} == names
    assert all(isinstance(s, torch.Tensor) for s in cb.best_k_models.values())
    assert Path(cb.best_model_path) == folder / f"epoch={best_two[0][0]}-val/loss={best_two[0][1]:.4f}.ckpt"
    assert float(cb.best_model_score) == pytest.approx(best_two[0][1])
    assert cb.last_model_path == str(folder / "last.ckpt")
    assert sorted(_ckpts(folder)) == sorted([*names, "last.ckpt"])  # the evicted ones were removed


def test_unmonitored_best_is_the_newest_checkpoint(tmp_path):
    cb = ModelCheckpoint(dirpath=tmp_path / "c", save_top_k=2)
    _fit(tmp_path, epochs=3, callbacks=[cb])
    assert cb.best_model_path == str(tmp_path / "c" / "epoch=2-step=12.ckpt")
    assert cb.best_model_score is None


def _first(results):
    """validate/test results: Lightning's list with one dict per loader, or the dict itself."""
    return results[0] if isinstance(results, list) else results


def test_ckpt_path_best_for_validate_test_predict_and_fit(tmp_path):
    folder = tmp_path / "c"
    cb = ModelCheckpoint(dirpath=folder, monitor="val/loss", mode="max", save_top_k=1)  # "best" = the worst loss
    losses = _ValLosses()
    torch.manual_seed(0)  # the task's initial weights decide which epoch is "best": not the test order's RNG state
    task = TinyTask()
    trainer = _fit(tmp_path, epochs=4, callbacks=[losses, cb], task=task)
    best_epoch, best_loss = max(losses.values.items(), key=lambda kv: kv[1])
    assert best_epoch < 3, "the test needs a best epoch that is not the last one"
    final = {k: v.clone() for k, v in task.state_dict().items()}

    result = _first(trainer.validate(task, loader(n=16), ckpt_path="best"))
    assert result["val/loss"] == pytest.approx(best_loss, rel=1e-6)
    best_weights = ckpt_io.load(cb.best_model_path)["state_dict"]
    assert all(torch.equal(task.state_dict()[k], best_weights[k]) for k in best_weights)
    assert not all(torch.equal(final[k], best_weights[k]) for k in best_weights)
    assert "test/loss" in _first(trainer.test(task, loader(n=16), ckpt_path="best"))
    inputs = torch.utils.data.DataLoader(torch.randn(16, 8), batch_size=8)
    assert len(trainer.predict(task, inputs, ckpt_path="best")) == 2

    # A new process: "best" is found through the run's last checkpoint, and fit resumes from it.
    counter = CountEpochs()
    t2 = quiet_trainer(tmp_path, max_epochs=5, callbacks=[counter, ModelCheckpoint(dirpath=folder, monitor="val/loss",
                                                                                   mode="max", save_top_k=1)],
                       enable_checkpointing=True)
    t2.fit(TinyTask(), loader(n=32), loader(n=16), ckpt_path="best")
    assert counter.epochs == list(range(best_epoch + 1, 5))
    t3 = quiet_trainer(tmp_path / "fresh", enable_checkpointing=True, max_epochs=1)
    assert t3.validate(TinyTask(), loader(n=16), ckpt_path=None)
    with pytest.raises(ConfigurationError, match="best"):
        t3.validate(TinyTask(), loader(n=16), ckpt_path="best")
    with pytest.raises(ConfigurationError, match="best"):
        quiet_trainer(tmp_path, max_epochs=1).validate(TinyTask(), loader(n=16), ckpt_path="best")


def test_resolve_last_waits_for_nothing_and_creates_no_run_folder(tmp_path):
    # Looking for "last" in a fresh root neither fails nor creates a version folder.
    trainer = quiet_trainer(tmp_path, logger=True, enable_checkpointing=True, max_epochs=1)
    from dltrain import _checkpointing
    started = time.monotonic()
    assert _checkpointing.resolve(trainer, "last") is None
    assert time.monotonic() - started < 5
    assert not (tmp_path / "lightning_logs").exists()
