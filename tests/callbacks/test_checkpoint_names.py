"""ModelCheckpoint's names, folders and arguments as Lightning's (item 7 of issue 22).

Names are compared with the installed Lightning's own ``ModelCheckpoint.format_checkpoint_name``.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest
import torch
from tests.helpers.tasks import TinyTask, loader, quiet_trainer

import dltrain
from dltrain import checkpoint as ckpt_io
from dltrain.callbacks import ModelCheckpoint
from dltrain.errors import CheckpointError

# loader(n=32) with batches of 8: 4 optimizer steps per epoch.

TEMPLATES = [
    None, "{epoch}", "{epoch:03d}", "{epoch}-{val_loss:.2f}", "digits-{epoch:02d}-{val_acc:.3f}",
    "{missing:d}", "{step}", "{epoch}-{step}-{val/loss:.3f}", "sample-{epoch_test}-{epoch}",
    "x{val_loss}", "{val_acc:.1%}-{epoch:>4}", "{train.loss:.4f}", "run-{epoch}-{step:05d}-end",
]
METRICS = {"epoch": 3, "step": 1200, "val_loss": 0.123456, "val_acc": 0.91234, "val/loss": 0.5, "epoch_test": 7,
           "train.loss": 1.25}


@pytest.mark.parametrize("auto_insert", [True, False])
@pytest.mark.parametrize("template", TEMPLATES)
def test_names_equal_lightnings(template, auto_insert):
    from lightning.pytorch.callbacks import ModelCheckpoint as LightningCheckpoint

    ours = ModelCheckpoint(filename=template, auto_insert_metric_name=auto_insert)
    theirs = LightningCheckpoint(filename=template, auto_insert_metric_name=auto_insert)
    # Logged values are tensors (float32 for metrics): both get the same ones.
    as_tensors = {k: torch.tensor(v) for k, v in METRICS.items()}
    assert ours.format_checkpoint_name(dict(as_tensors)) == theirs.format_checkpoint_name(dict(as_tensors))
    as_python = {k: v.item() for k, v in as_tensors.items()}  # what _candidates reads from callback_metrics
    assert ours.format_checkpoint_name(as_python, ver=2) == theirs.format_checkpoint_name(dict(as_tensors), ver=2)
    assert (ours.format_checkpoint_name(as_python, prefix="p")
            == theirs.format_checkpoint_name(dict(as_tensors), prefix="p"))


def _fit(root, callbacks, epochs=2, logger=False, ckpt_path=None, val=True, **kwargs):
    torch.manual_seed(0)
    trainer = quiet_trainer(root, max_epochs=epochs, callbacks=callbacks, enable_checkpointing=True, logger=logger,
                            **kwargs)
    trainer.fit(TinyTask(), loader(n=32), loader(n=16) if val else None, ckpt_path=ckpt_path)
    return trainer


def _names(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*.ckpt"))


def test_a_template_with_format_specs_names_the_files(tmp_path):
    cb = ModelCheckpoint(dirpath=tmp_path / "c", filename="digits-{epoch:02d}-{val/loss:.3f}", monitor="val/loss",
                         auto_insert_metric_name=False, save_top_k=-1)
    _fit(tmp_path, [cb])
    losses = {Path(p).name: float(v) for p, v in cb.best_k_models.items()}
    assert [n[:9] for n in sorted(losses)] == ["digits-00", "digits-01"]
    for name, value in losses.items():
        assert name.endswith(f"-{value:.3f}.ckpt"), (name, value)
    assert _names(tmp_path / "c") == sorted([*losses, "last.ckpt"])


def test_default_layout_is_lightnings(tmp_path, monkeypatch):
    # No default_root_dir: the working directory, lightning_logs/version_N/checkpoints/epoch=E-step=S.ckpt.
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    trainer = dltrain.Trainer(accelerator="cpu", max_epochs=2, enable_progress_bar=False, log_every_n_steps=1)
    trainer.fit(TinyTask(), loader(n=32), loader(n=16))
    assert trainer.default_root_dir == str(tmp_path)
    run = tmp_path / "lightning_logs" / "version_0"
    assert trainer.logger.log_dir == str(run)
    assert _names(run / "checkpoints") == ["epoch=1-step=8.ckpt", "last.ckpt"]
    loaded = TinyTask.load_from_checkpoint(run / "checkpoints" / "epoch=1-step=8.ckpt")
    assert isinstance(loaded, TinyTask)
    # Without a logger: <default_root_dir>/checkpoints, as Lightning.
    trainer = dltrain.Trainer(accelerator="cpu", max_epochs=1, enable_progress_bar=False, logger=False)
    trainer.fit(TinyTask(), loader(n=32))
    assert _names(tmp_path / "checkpoints") == ["epoch=0-step=4.ckpt", "last.ckpt"]


def test_version_counter_and_its_switch(tmp_path):
    folder = tmp_path / "c"
    _fit(tmp_path, [ModelCheckpoint(dirpath=folder)], epochs=1)
    first = (folder / "epoch=0-step=4.ckpt").read_bytes()
    _fit(tmp_path, [ModelCheckpoint(dirpath=folder)], epochs=1)
    assert _names(folder) == ["epoch=0-step=4-v1.ckpt", "epoch=0-step=4.ckpt", "last-v1.ckpt", "last.ckpt"]
    assert (folder / "epoch=0-step=4.ckpt").read_bytes() == first
    # enable_version_counter=False: Lightning replaces the file of the same name.
    _fit(tmp_path, [ModelCheckpoint(dirpath=folder, enable_version_counter=False)], epochs=1)
    assert _names(folder) == ["epoch=0-step=4-v1.ckpt", "epoch=0-step=4.ckpt", "last-v1.ckpt", "last.ckpt"]
    assert (folder / "epoch=0-step=4.ckpt").read_bytes() != first


def test_step_interval_alone_does_not_save_at_epoch_ends(tmp_path):
    # Lightning's defaults: every_n_epochs is 0 once a step interval is given; the end state is in "last".
    cb = ModelCheckpoint(dirpath=tmp_path / "c", every_n_train_steps=3, save_top_k=-1)
    _fit(tmp_path, [cb], epochs=2)
    assert _names(tmp_path / "c") == ["epoch=0-step=3.ckpt", "epoch=1-step=6.ckpt", "last.ckpt"]
    assert ckpt_io.load(tmp_path / "c" / "last.ckpt")["loops"]["global_step"] == 8
    # Both (beyond Lightning, which refuses the combination): step and epoch-end saves.
    both = ModelCheckpoint(dirpath=tmp_path / "d", every_n_train_steps=3, every_n_epochs=1, save_top_k=-1)
    _fit(tmp_path, [both], epochs=2)
    assert _names(tmp_path / "d") == ["epoch=0-step=3.ckpt", "epoch=0-step=4.ckpt", "epoch=1-step=6.ckpt",
                                      "epoch=1-step=8.ckpt", "last.ckpt"]


def test_train_time_interval_saves_after_the_interval(tmp_path):
    cb = ModelCheckpoint(dirpath=tmp_path / "c", train_time_interval=timedelta(0), save_top_k=-1)
    _fit(tmp_path, [cb], epochs=1)
    assert _names(tmp_path / "c") == [f"epoch=0-step={s}.ckpt" for s in (1, 2, 3, 4)] + ["last.ckpt"]
    never = ModelCheckpoint(dirpath=tmp_path / "d", train_time_interval=timedelta(hours=1), save_top_k=-1)
    _fit(tmp_path, [never], epochs=2)
    assert _names(tmp_path / "d") == ["last.ckpt"]


def test_validation_every_other_epoch_saves_after_it(tmp_path):
    # check_val_every_n_epoch=2: Lightning saves after the validations (epochs 1 and 3), not at every epoch end.
    cb = ModelCheckpoint(dirpath=tmp_path / "c", monitor="val/loss", save_top_k=-1, filename="{epoch}")
    _fit(tmp_path, [cb], epochs=4, check_val_every_n_epoch=2)
    assert _names(tmp_path / "c") == ["epoch=1.ckpt", "epoch=3.ckpt", "last.ckpt"]
    # save_on_train_epoch_end=True: every epoch end; the monitored metric is the newest validation's.
    at_end = ModelCheckpoint(dirpath=tmp_path / "d", save_top_k=-1, filename="{epoch}", save_on_train_epoch_end=True)
    _fit(tmp_path, [at_end], epochs=4, check_val_every_n_epoch=2)
    assert _names(tmp_path / "d") == ["epoch=0.ckpt", "epoch=1.ckpt", "epoch=2.ckpt", "epoch=3.ckpt", "last.ckpt"]


def test_validation_twice_per_epoch_saves_after_each(tmp_path):
    cb = ModelCheckpoint(dirpath=tmp_path / "c", save_top_k=-1)
    _fit(tmp_path, [cb], epochs=2, val_check_interval=0.5)
    assert _names(tmp_path / "c") == ["epoch=0-step=2.ckpt", "epoch=0-step=4.ckpt", "epoch=1-step=6.ckpt",
                                      "epoch=1-step=8.ckpt", "last.ckpt"]


def test_a_step_save_waits_for_the_validation_metric_it_monitors(tmp_path):
    cb = ModelCheckpoint(dirpath=tmp_path / "c", every_n_train_steps=1, monitor="val/loss", save_top_k=-1,
                         filename="{step}")
    _fit(tmp_path, [cb], epochs=2)
    # Steps 1-3 come before any validation: deferred to the first validation's end (epoch 0's, at step 4).
    assert _names(tmp_path / "c") == ["last.ckpt", "step=4.ckpt", "step=5.ckpt", "step=6.ckpt", "step=7.ckpt",
                                      "step=8.ckpt"]


def test_a_metric_validation_never_logs_is_an_error_once_validation_ran(tmp_path):
    from dltrain.errors import ConfigurationError

    cb = ModelCheckpoint(dirpath=tmp_path / "c", monitor="val/acc")
    with pytest.raises(ConfigurationError, match="val/acc"):
        _fit(tmp_path, [cb], epochs=1)
    # Without validation it is a warning (Lightning's), and only "last" is saved.
    cb = ModelCheckpoint(dirpath=tmp_path / "d", monitor="val/acc")
    with pytest.warns(UserWarning, match="val/acc"):
        _fit(tmp_path, [cb], epochs=1, val=False)
    assert _names(tmp_path / "d") == ["last.ckpt"]


def test_save_weights_only(tmp_path):
    cb = ModelCheckpoint(dirpath=tmp_path / "c", save_weights_only=True)
    trainer = _fit(tmp_path, [cb], epochs=1)
    ckpt = ckpt_io.load(tmp_path / "c" / "epoch=0-step=4.ckpt")
    assert "optimizer_states" not in ckpt and "callbacks" not in ckpt and ckpt["weights_only"]
    task = TinyTask()
    assert set(ckpt["state_dict"]) == set(task.state_dict())
    assert trainer.validate(task, loader(n=16), ckpt_path=str(tmp_path / "c" / "epoch=0-step=4.ckpt"))
    with pytest.raises(CheckpointError, match="save_weights_only"):
        _fit(tmp_path, [ModelCheckpoint(dirpath=tmp_path / "c")], epochs=2, ckpt_path="last")


class _Boom(dltrain.Callback):
    def on_train_batch_end(self, trainer, task, outputs, batch, batch_idx):
        if trainer.global_step == 6:
            raise RuntimeError("boom")


def test_save_on_exception_and_verbose(tmp_path, capfd):
    cb = ModelCheckpoint(dirpath=tmp_path / "c", save_on_exception=True, verbose=True, monitor="val/loss")
    with pytest.raises(RuntimeError, match="boom"):
        _fit(tmp_path, [_Boom(), cb], epochs=3)
    assert _names(tmp_path / "c") == ["epoch=0-step=4.ckpt", "epoch=1-step=6.ckpt", "last.ckpt"]
    assert ckpt_io.load(tmp_path / "c" / "last.ckpt")["loops"]["global_step"] == 6
    err = capfd.readouterr().err
    assert "'val/loss' reached" in err and "saved checkpoint to" in err and "boom" in err
    # It resumes: the exception checkpoint is "last".
    t2 = _fit(tmp_path, [ModelCheckpoint(dirpath=tmp_path / "c")], epochs=3, ckpt_path="last")
    assert t2.global_step == 12


def test_last_name_template_and_link(tmp_path):
    class Named(ModelCheckpoint):
        CHECKPOINT_NAME_LAST = "{epoch}-last"

    cb = Named(dirpath=tmp_path / "c", save_last="link")
    _fit(tmp_path, [cb], epochs=2)
    # Lightning formats the "last" name as a template too; each save names it anew.
    assert cb.last_model_path == str(tmp_path / "c" / "epoch=1-last.ckpt")
    assert _names(tmp_path / "c") == ["epoch=1-last.ckpt", "epoch=1-step=8.ckpt"]  # epoch=0-last.ckpt was replaced
    assert os.path.exists(cb.last_model_path)
