"""Trainer(compile=...) and the Compile callback: compiled in place, compile time reported once, recompilations
counted and warned about with dynamo's reasons, results equal to the eager run (CPU, eager/aot_eager backends)."""

from __future__ import annotations

import warnings

import pytest
import torch
from tests.helpers.tasks import RecordingLogger, TinyTask, loader, quiet_trainer
from torch import nn

import dltrain
from dltrain import _compat
from dltrain.callbacks import Compile
from dltrain.errors import ConfigurationError


def _compile_cb(trainer: dltrain.Trainer) -> Compile:
    return next(c for c in trainer.callbacks if isinstance(c, Compile))


def _fit(tmp_path, compile, epochs=1, n=96, **kw):
    torch.manual_seed(0)
    task = TinyTask()
    trainer = quiet_trainer(tmp_path, max_epochs=epochs, compile=compile, **kw)
    trainer.fit(task, loader(n=n), loader(n=32))
    return trainer, task


def test_compiled_training_equals_eager_and_time_is_reported_once(tmp_path, capsys):
    torch._dynamo.reset()
    _, eager = _fit(tmp_path, False, epochs=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no recompilation warning: train and eval modes are expected compiles
        trainer, task = _fit(tmp_path, {"backend": "aot_eager"}, epochs=2)
    cb = _compile_cb(trainer)
    assert cb.compiled == ["model"] and _compat.is_compiled(task.model)
    # Forward in training and in evaluation (no_grad), one backward graph: all went through dynamo.
    assert cb.compilations == 2 and cb.compile_seconds > 0 and cb.recompiles == 0
    err = capsys.readouterr().err
    assert err.count("torch.compile: compiled in") == 1, err
    for p, q in zip(task.parameters(), eager.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    assert list(task.state_dict()) == list(eager.state_dict())  # compiled in place: same names in checkpoints


def test_a_changed_shape_is_a_counted_and_explained_recompilation(tmp_path, capsys):
    torch._dynamo.reset()
    rec = RecordingLogger()
    with pytest.warns(UserWarning, match="recompiled") as caught:
        # 20 samples in batches of 8: the last batch has 4, a new shape for dynamic=False.
        trainer, _ = _fit(tmp_path, {"backend": "eager", "dynamic": False}, epochs=2, n=20, logger=rec,
                          log_every_n_steps=1)
    cb = _compile_cb(trainer)
    assert cb.recompiles == 1  # the second epoch finds both shapes compiled
    messages = [str(w.message) for w in caught if "recompiled" in str(w.message)]
    assert len(messages) == 1
    assert "size mismatch at index 0. expected 8, actual 4" in messages[0], messages[0]
    assert "size mismatch" in cb.recompile_reasons[0]
    assert [v for _, v in rec.values("compile/recompiles")][-1] == 1.0
    seconds = [v for _, v in rec.values("compile/seconds")]
    assert seconds and seconds[-1] == pytest.approx(cb.compile_seconds, rel=1e-5)
    assert capsys.readouterr().err.count("compiled in") == 1


def test_fit_takes_a_task_compiled_by_the_user(tmp_path, capsys):
    torch._dynamo.reset()
    torch.manual_seed(0)
    task = TinyTask()
    compiled = torch.compile(task, backend="eager")
    trainer = quiet_trainer(tmp_path, max_epochs=1, compile=True)
    trainer.fit(compiled, loader(n=32))
    cb = _compile_cb(trainer)
    assert trainer._task is task and cb.compiled == []  # left as the user compiled it, and measured
    assert cb.compilations >= 1 and cb.compile_seconds > 0
    assert "the modules you compiled" in capsys.readouterr().err
    assert trainer.validate(compiled, loader(n=16), verbose=False)[0]["val/loss"] > 0


class Blocks(TinyTask):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(8, 8), nn.ReLU()) for _ in range(2))

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return self.model(x)


def test_modules_are_chosen_by_pattern(tmp_path):
    torch._dynamo.reset()
    trainer = quiet_trainer(tmp_path, max_steps=2, compile={"modules": "blocks.*", "backend": "eager"})
    task = Blocks()
    trainer.fit(task, loader(n=32))
    cb = _compile_cb(trainer)
    assert cb.compiled == ["blocks.0", "blocks.1"]  # the outermost matches only
    assert cb.recompiles == 0  # the second block compiling the shared code again is part of the first batch
    assert not _compat.is_compiled(task.model)
    with pytest.raises(ConfigurationError, match="matches no module"):
        quiet_trainer(tmp_path, max_steps=1, compile={"modules": "layers.*"}).fit(Blocks(), loader(n=16))
    with pytest.raises(ConfigurationError, match="Compile's arguments"):
        quiet_trainer(tmp_path, compile={"modes": "max-autotune"})
