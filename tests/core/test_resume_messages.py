"""A resume that finds nothing names where checkpoints really live (issue 28, item 8).

Before: ``no complete checkpoint in <root>/checkpoints`` while the default ModelCheckpoint writes into the run
folder (``<root>/lightning_logs/version_N/checkpoints``). The test takes the places from the message and checks that the
checkpoint the next run writes lands in one of them, so it follows the layout code, whatever it is.
"""

from __future__ import annotations

import contextlib
import fnmatch
import io
import re
from pathlib import Path

import dltrain
from dltrain.callbacks import ModelCheckpoint
from tests.helpers.tasks import TinyTask, loader


def _fit_last(root: Path, **kwargs) -> str:
    trainer = dltrain.Trainer(accelerator="cpu", max_epochs=1, default_root_dir=str(root), enable_progress_bar=False,
                              log_every_n_steps=4, **kwargs)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        trainer.fit(TinyTask(), loader(n=32), ckpt_path="last")
    return err.getvalue()


def _places(message: str) -> list[str]:
    line = next(line for line in message.splitlines() if "ckpt_path='last'" in line)
    return re.findall(r"'([^']+)'", line.split("no complete checkpoint", 1)[1])


def test_last_with_nothing_to_resume_names_the_run_folders(tmp_path):
    message = _fit_last(tmp_path)
    places = _places(message)
    assert places, message
    written = sorted(str(p.parent) for p in tmp_path.rglob("*.ckpt"))
    assert written, "the run should have written a checkpoint"
    assert all(any(fnmatch.fnmatch(w, place) for place in places) for w in written), (message, written)
    assert f"'{tmp_path / 'checkpoints'}'" not in message  # not the pre-run-folder layout's place


def test_last_with_an_explicit_dirpath_names_it(tmp_path):
    folder = tmp_path / "mine"
    message = _fit_last(tmp_path / "root", callbacks=[ModelCheckpoint(dirpath=folder)])
    assert _places(message) == [str(folder)], message
