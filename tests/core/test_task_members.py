"""LightningModule members on Task and Lightning's Trainer members (issue 22 items 1 and 6), run with the defaults
users get (progress bar, logger and checkpointing on)."""

from __future__ import annotations

import io

import pytest
import torch
from torch.nn import functional as F

import dltrain
from dltrain.callbacks import EarlyStopping, LambdaCallback, ModelCheckpoint, ModelSummary
from dltrain.errors import ConfigurationError
from tests.helpers.tasks import TinyTask, loader


def trainer_for(tmp_path, **kwargs) -> dltrain.Trainer:
    """A Trainer with the user's defaults (progress bar, CSV logger, checkpoints), on CPU."""
    kwargs.setdefault("max_epochs", 1)
    return dltrain.Trainer(accelerator="cpu", default_root_dir=str(tmp_path), log_every_n_steps=2, **kwargs)


class Shapes(TinyTask):
    def __init__(self):
        super().__init__()
        self.example_input_array = torch.zeros(5, 8)


def test_freeze_unfreeze_fabric_and_hparams_initial():
    task = TinyTask(lr=0.1)
    task.hparams.lr = 0.5  # a later change is in hparams, not in hparams_initial
    assert task.hparams_initial == {"dropout": 0.0, "lr": 0.1, "scheduler": None}
    assert task.hparams.lr == 0.5 and task.fabric is None
    task.freeze()
    assert not task.training and not any(p.requires_grad for p in task.parameters())
    task.unfreeze()
    assert task.training and all(p.requires_grad for p in task.parameters())
    task.remove_ignored_hparams(["scheduler"])
    assert "scheduler" not in task.hparams and "scheduler" not in task.hparams_initial


def test_torchscript_and_onnx_give_the_tasks_outputs(tmp_path):
    task = Shapes()
    x = torch.randn(3, 8)
    expected = task(x)
    scripted = task.to_torchscript(file_path=tmp_path / "s.pt")
    torch.testing.assert_close(torch.jit.load(str(tmp_path / "s.pt"))(x), expected)
    torch.testing.assert_close(scripted(x), expected)
    traced = task.to_torchscript(method="trace")  # on example_input_array
    torch.testing.assert_close(traced(x), expected)
    assert task.training  # the mode is given back
    import onnx

    task.to_onnx(tmp_path / "m.onnx")
    onnx.checker.check_model(onnx.load(str(tmp_path / "m.onnx")))
    with pytest.raises(ConfigurationError, match=r"to_torchscript.*'trace'"):
        task.to_torchscript(method="compile")
    with pytest.raises(ConfigurationError, match="example_input_array"):
        TinyTask().to_onnx(tmp_path / "n.onnx")


def test_to_onnx_without_onnx_names_the_extra(monkeypatch, tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnx" else real(name, *a))
    with pytest.raises(ConfigurationError, match=r"dltrain\[onnx\]"):
        Shapes().to_onnx(tmp_path / "m.onnx")


def test_summary_shows_in_and_out_sizes_of_example_input_array():
    out = io.StringIO()
    task = Shapes()
    ModelSummary(max_depth=2, file=out).on_fit_start(type("T", (), {"is_global_zero": True})(), task)
    text = out.getvalue()
    assert "In sizes" in text and "Out sizes" in text
    assert "[5, 8]" in text and "[5, 32]" in text and "[5, 1]" in text  # model.0: 8 -> 32, model.3: 32 -> 1


class OwnBackward(TinyTask):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def backward(self, loss, *args, **kwargs):
        self.calls += 1
        (loss * 2).backward()  # doubles every gradient


def test_overridden_backward_is_what_computes_the_gradients(tmp_path):
    torch.manual_seed(0)
    own = OwnBackward()
    torch.manual_seed(0)
    plain = TinyTask(lr=0.1)  # SGD with lr 0.1 on the plain loss == lr 0.05 on the doubled one
    plain.hparams.lr = plain.lr = 0.1
    trainer_for(tmp_path / "a", enable_checkpointing=False, logger=False).fit(own, loader(32))
    trainer_for(tmp_path / "b", enable_checkpointing=False, logger=False).fit(plain, loader(32))
    assert own.calls == 4
    for a, b in zip(own.parameters(), plain.parameters()):
        torch.testing.assert_close(a, b)


class TwoOptimizers(dltrain.Task):
    def __init__(self):
        super().__init__()
        self.automatic_optimization = False
        self.a, self.b = torch.nn.Linear(8, 1), torch.nn.Linear(8, 1)
        self.seen: list[tuple[bool, bool]] = []

    def training_step(self, batch, batch_idx):
        opt_a, opt_b = self.optimizers()
        with self.toggled_optimizer(opt_a):
            self.seen.append((self.a.weight.requires_grad, self.b.weight.requires_grad))
            loss = F.mse_loss(self.a(batch[0]), batch[1])
            self.manual_backward(loss)
            opt_a.step()
            opt_a.zero_grad()
        self.seen.append((self.a.weight.requires_grad, self.b.weight.requires_grad))
        gathered = self.all_gather(loss.detach(), sync_grads=False)
        assert torch.equal(gathered, loss.detach())  # one process: returned as it is

    def configure_optimizers(self):
        return torch.optim.SGD(self.a.parameters(), lr=0.1), torch.optim.SGD(self.b.parameters(), lr=0.1)


def test_toggled_optimizer_and_all_gather(tmp_path):
    task = TwoOptimizers()
    trainer_for(tmp_path, limit_train_batches=2).fit(task, loader(32))
    assert task.seen == [(True, False), (True, True)] * 2


def test_strict_loading_false_loads_a_checkpoint_with_other_keys(tmp_path):
    trainer = trainer_for(tmp_path)
    trainer.fit(TinyTask(), loader(16))
    path = trainer.checkpoint_callback.last_model_path

    class Bigger(TinyTask):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.extra = torch.nn.Linear(2, 2)

    with pytest.raises(Exception, match="extra"):
        Bigger.load_from_checkpoint(path)
    task = Bigger.load_from_checkpoint(path, strict=False)
    loose = Bigger()
    loose.strict_loading = False
    assert not loose.strict_loading and TinyTask().strict_loading
    torch.testing.assert_close(task.model[0].weight, TinyTask.load_from_checkpoint(path).model[0].weight)


def test_configure_sharded_model_is_refused_with_the_reason(tmp_path):
    class Old(TinyTask):
        def configure_sharded_model(self):
            pass

    with pytest.raises(ConfigurationError, match="configure_model"):
        trainer_for(tmp_path).fit(Old(), loader(16))


def test_trainer_members_say_what_runs(tmp_path):
    seen = []

    def record(trainer, task, *args):
        seen.append((trainer.state.fn, trainer.state.stage, trainer.training, trainer.validating,
                     trainer.sanity_checking, trainer.evaluating))

    probe = LambdaCallback(on_train_batch_start=record, on_validation_batch_start=record, on_test_batch_start=record)
    stop = EarlyStopping(monitor="val/loss", patience=5)
    trainer = trainer_for(tmp_path, callbacks=[probe, stop], limit_train_batches=1, limit_val_batches=1,
                          limit_test_batches=1, num_sanity_val_steps=1)
    assert trainer.state.status == "initializing" and trainer.lightning_module is None
    task = TinyTask()
    trainer.fit(task, loader(16), loader(16))
    trainer.test(task, loader(16), verbose=False)
    assert seen == [("fit", "sanity_check", False, False, True, True), ("fit", "train", True, False, False, False),
                    ("fit", "validate", False, True, False, True), ("test", "test", False, False, False, True)]
    assert trainer.state.finished and trainer.lightning_module is task and trainer.model is not None
    assert trainer.early_stopping_callback is stop and trainer.early_stopping_callbacks == [stop]
    assert [type(c) for c in trainer.checkpoint_callbacks] == [ModelCheckpoint]
    assert trainer.progress_bar_callback is not None and trainer.log_dir.startswith(str(tmp_path))
    assert trainer.num_devices == 1 and trainer.num_nodes == 1 and trainer.node_rank == 0
    assert trainer.distributed_sampler_kwargs is None and trainer.scaler is None
    assert trainer.accelerator is not None and trainer.precision_plugin is not None
    assert trainer.num_sanity_val_batches == [1] and not trainer.received_sigterm and not trainer.interrupted
    with trainer.init_module():
        layer = torch.nn.Linear(2, 2)
    assert layer.weight.device.type == "cpu"
    with pytest.raises(ConfigurationError, match="loop_state"):
        trainer.fit_loop  # noqa: B018


def test_ckpt_path_and_interrupted(tmp_path):
    trainer = trainer_for(tmp_path)
    trainer.fit(TinyTask(), loader(16))
    assert trainer.ckpt_path is None
    path = trainer.checkpoint_callback.last_model_path
    trainer2 = trainer_for(tmp_path, max_epochs=2)
    trainer2.fit(TinyTask(), loader(16), ckpt_path=path)
    assert trainer2.ckpt_path == path
    trainer2.validate(TinyTask(), loader(16), ckpt_path=path, verbose=False)
    assert trainer2.ckpt_path == path

    class Fails(TinyTask):
        def training_step(self, batch, batch_idx):
            raise ValueError("boom")

    trainer3 = trainer_for(tmp_path)
    with pytest.raises(ValueError, match="boom"):
        trainer3.fit(Fails(), loader(16))
    assert trainer3.interrupted and trainer3.state.status == "interrupted"


def test_refused_accelerators_and_strategies_say_why():
    with pytest.raises(ConfigurationError, match="CPU, CUDA and MPS"):
        dltrain.Trainer(accelerator="tpu")
    with pytest.raises(ConfigurationError, match="fsdp2"):
        dltrain.Trainer(accelerator="cpu", strategy="deepspeed_stage_2")


def test_save_checkpoint_weights_only(tmp_path):
    from dltrain import checkpoint as ckpt_io

    trainer = trainer_for(tmp_path, enable_checkpointing=False)
    task = TinyTask()
    trainer.fit(task, loader(16))
    trainer.save_checkpoint(filepath=tmp_path / "w.ckpt", weights_only=True)
    saved = ckpt_io.load(tmp_path / "w.ckpt")
    assert "optimizer_states" not in saved and "lr_schedulers" not in saved
    loaded = TinyTask.load_from_checkpoint(tmp_path / "w.ckpt")
    torch.testing.assert_close(loaded.model[0].weight, task.model[0].weight)
    with pytest.raises(ConfigurationError, match="storage_options"):
        trainer.save_checkpoint(tmp_path / "x.ckpt", storage_options={"a": 1})


def test_trainer_state_holds_lightnings_string_enums(tmp_path):
    """``from lightning.pytorch.trainer.states import TrainerFn`` renamed is ``from dltrain import TrainerFn``
    (it was an ImportError); the members equal their strings, so comparisons with either spelling hold."""
    from dltrain import RunningStage, TrainerFn, TrainerStatus

    seen = []

    class Probe(dltrain.Callback):
        def on_train_batch_start(self, trainer, task, batch, batch_idx):
            seen.append(trainer.state)

    trainer = dltrain.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_progress_bar=False,
                              enable_checkpointing=False, callbacks=[Probe()], default_root_dir=str(tmp_path))
    assert trainer.state.status is TrainerStatus.INITIALIZING and trainer.state.fn is None
    trainer.fit(TinyTask(), loader(n=16))
    during = seen[0]
    assert during.fn is TrainerFn.FITTING and during.fn == "fit"
    assert during.stage is RunningStage.TRAINING and not during.stage.evaluating
    assert during.status is TrainerStatus.RUNNING and not during.status.stopped
    assert trainer.state.status is TrainerStatus.FINISHED and trainer.state.status.stopped
    assert str(trainer.state.fn) == "TrainerFn.FITTING"  # as Lightning's prints
    assert RunningStage.SANITY_CHECKING.dataloader_prefix == "val" and RunningStage.TESTING.dataloader_prefix == "test"


def test_manual_optimizers_are_instances_of_their_class_and_a_detached_trainer_is_a_runtime_error(tmp_path):
    """Lightning's wrapped optimizers pass ``isinstance(opt, torch.optim.Adam)`` and act on the optimizer's own state;
    ``task.trainer`` on a task given to no Trainer is a RuntimeError there (both differed; found by a probe under both
    libraries, issue 22)."""

    class Manual(TinyTask):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = False
            self.seen: list = []

        def training_step(self, batch, batch_idx):
            opt = self.optimizers()
            inner = self.trainer.optimizers[0]
            loss = super().training_step(batch, batch_idx)
            self.manual_backward(loss)
            opt.step()
            opt.zero_grad()
            state = opt.state_dict()  # the optimizer's own state, through the wrapper
            self.seen.append((isinstance(opt, torch.optim.Adam), opt.param_groups is inner.param_groups,
                              state["state"].keys() == inner.state_dict()["state"].keys(), len(state["state"]) > 0))
            opt.param_groups[0]["lr"] = 0.5  # the same groups: the optimizer sees the change
            assert inner.param_groups[0]["lr"] == 0.5
            return loss

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=0.01)

    with pytest.raises(RuntimeError, match="not attached to a Trainer"):
        Manual().trainer  # noqa: B018
    task = Manual()
    trainer_for(tmp_path, limit_train_batches=2, enable_checkpointing=False).fit(task, loader(32))
    assert task.seen == [(True, True, True, True)] * 2
    opt = task.optimizers()
    assert isinstance(opt, torch.optim.Optimizer) and "Adam" in repr(opt) and trainer_for(tmp_path).global_step == 0


def test_setup_and_teardown_get_lightnings_trainer_fn(tmp_path):
    """Lightning passes ``TrainerFn.FITTING`` (a str enum: ``== "fit"``, printed as ``TrainerFn.FITTING``) to
    ``setup``/``teardown`` of the task, the datamodule and the callbacks; dltrain passed the plain string, so
    ``f"{stage}"`` differed (found by a probe under both libraries, issue 22)."""
    from dltrain.states import TrainerFn

    seen: list = []

    class Record(dltrain.Callback):
        def setup(self, trainer, task, stage):
            seen.append(("callback", stage))

        def teardown(self, trainer, task, stage):
            seen.append(("callback-end", stage))

    class Task(TinyTask):
        def setup(self, stage):
            seen.append(("task", stage))

    class Data(dltrain.DataModule):
        def setup(self, stage):
            seen.append(("datamodule", stage))

        def train_dataloader(self):
            return loader(16)

        def val_dataloader(self):
            return loader(16)

    trainer = trainer_for(tmp_path, callbacks=[Record()], enable_checkpointing=False)
    trainer.fit(Task(), datamodule=Data())
    trainer.validate(Task(), datamodule=Data(), verbose=False)
    stages = [stage for _, stage in seen]
    assert all(type(stage) is TrainerFn for stage in stages), seen
    assert [f"{stage}" for _, stage in seen] == (["TrainerFn.FITTING"] * 4 + ["TrainerFn.VALIDATING"] * 4)
    assert stages[0] == "fit" and [who for who, _ in seen][:4] == ["datamodule", "callback", "task", "callback-end"]


def test_evaluating_after_fit_without_a_model_uses_the_best_checkpoint_as_lightning(tmp_path):
    """``trainer.test()`` / ``validate()`` after ``fit`` with no model and no ``ckpt_path``: Lightning loads the best
    checkpoint of that fit and warns so; dltrain tested the weights of the fit's end, so the reported test metric
    was another model's (found by a probe under both libraries, issue 22). Without a checkpoint callback it is an
    error there, as in Lightning; with the model passed, its current weights are used (no warning)."""

    class Worse(TinyTask):
        """Validation loss grows every epoch: the best checkpoint is the first epoch's."""

        def validation_step(self, batch, batch_idx):
            self.log("val_loss", float(self.current_epoch))

    task = Worse()
    ckpt = ModelCheckpoint(monitor="val_loss", save_top_k=1)
    trainer = trainer_for(tmp_path, max_epochs=3, callbacks=[ckpt])
    trainer.fit(task, loader(32), loader(16))
    assert "epoch=0" in ckpt.best_model_path
    with pytest.warns(UserWarning, match=r"validate\(\) was called without a model.*best checkpoint"):
        trainer.validate(dataloaders=loader(16), verbose=False)
    assert trainer.ckpt_path == ckpt.best_model_path
    trainer.validate(task, loader(16), verbose=False)  # the model given: its weights, nothing loaded
    assert trainer.ckpt_path is None
    plain = trainer_for(tmp_path / "plain", enable_checkpointing=False)
    plain.fit(TinyTask(), loader(32))
    with pytest.raises(ConfigurationError, match=r'ckpt_path="best".*ModelCheckpoint.*pass the model'):
        plain.test(dataloaders=loader(16), verbose=False)
