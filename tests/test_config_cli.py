"""dltrain.CLI: LightningCLI's arguments and behaviour, on a tiny Task and data module."""

from __future__ import annotations

import importlib.util
import inspect
import os

import pytest
import torch
import yaml
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

import dltrain

pytest.importorskip("jsonargparse")

# A data module by duck typing (what the Trainer asks of one), so that these tests do not depend on
# dltrain.DataModule's own features.
_HAS_DATAMODULE = importlib.util.find_spec("dltrain.datamodule") is not None
_NEEDS_FIT_DATAMODULE = pytest.mark.xfail(
    "datamodule" not in inspect.signature(dltrain.Trainer.fit).parameters, strict=True, reason="issue 13: Trainer.fit(model, datamodule=...) and dltrain.DataModule"
)


class CliTask(dltrain.Task):
    def __init__(self, hidden: int = 16, lr: float = 0.05) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.lr = lr
        self.net = torch.nn.Sequential(torch.nn.Linear(4, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.mse_loss(self.net(x), y)
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val/loss", F.mse_loss(self.net(x), y))

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.log("test/loss", F.mse_loss(self.net(x), y))

    def predict_step(self, batch, batch_idx):
        return self.net(batch[0])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


class OtherTask(CliTask):
    def __init__(self, hidden: int = 8, lr: float = 0.1, dropout: float = 0.0) -> None:
        super().__init__(hidden=hidden, lr=lr)
        self.dropout = dropout


if _HAS_DATAMODULE:
    from dltrain.datamodule import DataModule as _Base
else:
    _Base = object  # type: ignore[assignment,misc]


class CliData(_Base):  # type: ignore[misc,valid-type]
    def __init__(self, batch_size: int = 16, n: int = 64) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.n = n

    def setup(self, stage: str) -> None:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(self.n, 4, generator=g)
        self.data = TensorDataset(x, x.sum(1, keepdim=True))

    def train_dataloader(self):
        return DataLoader(self.data, batch_size=self.batch_size)

    def val_dataloader(self):
        return DataLoader(self.data, batch_size=self.batch_size)

    def test_dataloader(self):
        return DataLoader(self.data, batch_size=self.batch_size)

    def predict_dataloader(self):
        return DataLoader(self.data, batch_size=self.batch_size)


def _defaults(tmp_path, **more):
    return {"accelerator": "cpu", "default_root_dir": str(tmp_path), "enable_progress_bar": False, **more}


def test_run_false_builds_model_data_trainer(tmp_path):
    cli = dltrain.CLI(
        CliTask, CliData, trainer_defaults=_defaults(tmp_path), seed_everything_default=7, run=False,
        args=["--trainer.max_epochs", "3", "--model.lr", "0.1", "--data.batch_size", "8"],
    )
    assert isinstance(cli.model, CliTask) and cli.model.lr == 0.1 and cli.model.hparams["hidden"] == 16
    assert isinstance(cli.datamodule, CliData) and cli.datamodule.batch_size == 8
    assert isinstance(cli.trainer, dltrain.Trainer) and cli.trainer.max_epochs == 3
    assert cli.config["seed_everything"] == 7 and cli.config["trainer"]["accelerator"] == "cpu"
    assert cli.subcommand is None


def test_config_file_then_command_line(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {"seed_everything": 3, "trainer": {"max_epochs": 5, "log_every_n_steps": 2},
             "model": {"hidden": 4, "lr": 0.2}, "data": {"batch_size": 4}}
        )
    )
    cli = dltrain.CLI(
        CliTask, CliData, trainer_defaults=_defaults(tmp_path), run=False,
        args=["--config", str(config), "--model.lr", "0.3"],  # later arguments win, as in Lightning
    )
    assert cli.model.hparams == {"hidden": 4, "lr": 0.3}
    assert cli.trainer.max_epochs == 5 and cli.trainer.log_every_n_steps == 2
    assert cli.datamodule.batch_size == 4 and cli.config["seed_everything"] == 3


def test_dict_args_subclass_mode_and_seed(tmp_path):
    cli = dltrain.CLI(
        trainer_defaults=_defaults(tmp_path), run=False,
        args={"model": {"class_path": f"{__name__}.OtherTask", "init_args": {"dropout": 0.5}},
              "trainer": {"max_steps": 4}},
    )
    assert type(cli.model) is OtherTask and cli.model.dropout == 0.5 and cli.trainer.max_steps == 4
    assert cli.datamodule is None
    seed = cli.config["seed_everything"]  # True by default: a random seed, recorded for the saved config
    assert isinstance(seed, int) and not isinstance(seed, bool)
    assert cli.trainer.seed == seed  # the data order follows it

    unseeded = dltrain.CLI(CliTask, trainer_defaults=_defaults(tmp_path), run=False, args=["--seed_everything", "false"])
    assert unseeded.config["seed_everything"] is False


def test_print_config(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        dltrain.CLI(
            CliTask, CliData, trainer_defaults=_defaults(tmp_path, max_epochs=2),
            args=["fit", "--model.lr", "0.25", "--print_config"],
        )
    assert stop.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"] == {"hidden": 16, "lr": 0.25}
    assert printed["trainer"]["max_epochs"] == 2 and printed["data"]["batch_size"] == 16
    assert "ckpt_path" in printed  # fit's own arguments


def test_optimizer_and_scheduler_from_the_command_line(tmp_path):
    cli = dltrain.CLI(
        CliTask, trainer_defaults=_defaults(tmp_path), run=False,
        args=["--optimizer", "torch.optim.Adam", "--optimizer.lr", "0.01",
              "--lr_scheduler", "torch.optim.lr_scheduler.StepLR", "--lr_scheduler.step_size", "3"],
    )
    out = cli.model.configure_optimizers()
    assert isinstance(out["optimizer"], torch.optim.Adam) and out["optimizer"].param_groups[0]["lr"] == 0.01
    assert isinstance(out["lr_scheduler"], torch.optim.lr_scheduler.StepLR) and out["lr_scheduler"].step_size == 3
    plain = dltrain.CLI(CliTask, trainer_defaults=_defaults(tmp_path), run=False, args=[])
    assert isinstance(plain.model.configure_optimizers(), torch.optim.SGD)  # the task's own


def test_unknown_argument_is_an_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        dltrain.CLI(CliTask, trainer_defaults=_defaults(tmp_path), run=False, args=["--trainer.max_epoch", "3"])
    assert stop.value.code != 0
    assert "max_epoch" in capsys.readouterr().err


@_NEEDS_FIT_DATAMODULE
def test_fit_saves_the_config_then_test(tmp_path):
    args = ["fit", "--trainer.max_epochs", "2", "--trainer.logger", "true", "--model.lr", "0.1",
            "--data.batch_size", "8", "--seed_everything", "5"]
    cli = dltrain.CLI(CliTask, CliData, trainer_defaults=_defaults(tmp_path), args=args)
    assert cli.subcommand == "fit" and cli.trainer.current_epoch == 2
    saved_at = cli.trainer.loggers[0].log_dir
    with open(os.path.join(saved_at, "config.yaml")) as f:
        saved = yaml.safe_load(f)
    assert saved["model"] == {"hidden": 16, "lr": 0.1} and saved["seed_everything"] == 5
    assert saved["trainer"]["max_epochs"] == 2

    # The saved file reruns the same configuration; a test stage reads it too.
    again = dltrain.CLI(
        CliTask, CliData, trainer_defaults=_defaults(tmp_path), args=["test", "--config", os.path.join(saved_at, "config.yaml")]
    )
    assert again.subcommand == "test" and again.model.lr == 0.1


@_NEEDS_FIT_DATAMODULE
def test_existing_config_is_not_overwritten(tmp_path):
    args = ["fit", "--trainer.max_epochs", "1", "--trainer.logger", "false"]
    dltrain.CLI(CliTask, CliData, trainer_defaults=_defaults(tmp_path), args=args)
    assert os.path.exists(tmp_path / "config.yaml")  # no logger: default_root_dir
    with pytest.raises(RuntimeError, match="overwrite"):
        dltrain.CLI(CliTask, CliData, trainer_defaults=_defaults(tmp_path), args=args)
    dltrain.CLI(CliTask, CliData, trainer_defaults=_defaults(tmp_path), args=args,
                save_config_kwargs={"overwrite": True})


def test_dltrain_command_runs_fit_with_classes_by_path(tmp_path, monkeypatch):
    """`dltrain fit --model module.Task --data module.Data ...`, as `lightning fit` does: modules in the current
    folder import, arguments reach the task, the data module and the Trainer, the config is saved."""
    (tmp_path / "cli_mod.py").write_text(
        "import torch\n"
        "from torch.utils.data import DataLoader, TensorDataset\n"
        "import dltrain\n\n"
        "class Reg(dltrain.Task):\n"
        "    def __init__(self, lr: float = 0.1):\n"
        "        super().__init__()\n"
        "        self.save_hyperparameters()\n"
        "        self.net = torch.nn.Linear(4, 1)\n"
        "    def training_step(self, batch, batch_idx):\n"
        "        x, y = batch\n"
        "        return torch.nn.functional.mse_loss(self.net(x), y)\n"
        "    def configure_optimizers(self):\n"
        "        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)\n\n"
        "class Data(dltrain.DataModule):\n"
        "    def __init__(self, n: int = 32):\n"
        "        super().__init__()\n"
        "        self.n = n\n"
        "    def train_dataloader(self):\n"
        "        x = torch.randn(self.n, 4, generator=torch.Generator().manual_seed(0))\n"
        "        return DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=8)\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    from dltrain.cli import main

    assert main(["fit", "--model", "cli_mod.Reg", "--data", "cli_mod.Data", "--model.lr", "0.05", "--data.n", "48",
                 "--trainer.max_epochs", "2", "--trainer.accelerator", "cpu", "--trainer.logger", "false",
                 "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(tmp_path / "runs")]) == 0
    config = (tmp_path / "runs" / "config.yaml").read_text()
    assert "lr: 0.05" in config and "n: 48" in config and "max_epochs: 2" in config
    assert list((tmp_path / "runs").rglob("last.ckpt"))  # in the run's checkpoint folder


@_NEEDS_FIT_DATAMODULE
def test_resumed_fit_writes_its_config_into_the_run_it_resumes(tmp_path):
    # Issue 28 item 3: `fit --config cfg.yaml --ckpt_path last` continued in logs/version_0 but wrote its config
    # into a new, otherwise empty logs/version_1.
    first = ["fit", "--trainer.max_epochs", "1", "--trainer.logger", "true", "--data.batch_size", "8"]
    cli = dltrain.CLI(CliTask, CliData, trainer_defaults=_defaults(tmp_path), args=first)
    run = cli.trainer.loggers[0].log_dir
    original = open(os.path.join(run, "config.yaml")).read()

    again = ["fit", "--trainer.max_epochs", "2", "--trainer.logger", "true", "--data.batch_size", "8",
             "--ckpt_path", "last"]
    resumed = dltrain.CLI(CliTask, CliData, trainer_defaults=_defaults(tmp_path), args=again)
    assert resumed.trainer.current_epoch == 2
    assert resumed.trainer.loggers[0].log_dir == run  # the run it resumed
    runs = sorted(p.name for p in (tmp_path / "lightning_logs").iterdir())
    assert runs == [os.path.basename(run)], runs  # no new, empty run folder
    # The first invocation's record stays as it was; the resume's (max_epochs 2) is next to it.
    assert open(os.path.join(run, "config.yaml")).read() == original
    with open(os.path.join(run, "config-v1.yaml")) as f:
        assert yaml.safe_load(f)["trainer"]["max_epochs"] == 2


# ---------------------------------------------------------------------- issue 22 item 9: Lightning's CLI surface
class _LinkedCLI(dltrain.CLI):
    """Lightning's add_arguments_to_parser: a callback's arguments, a link and a default."""

    def add_arguments_to_parser(self, parser):
        from dltrain.callbacks import EarlyStopping

        parser.add_lightning_class_args(EarlyStopping, "early_stopping")
        parser.set_defaults({"early_stopping.monitor": "val/loss", "early_stopping.patience": 1})
        parser.link_arguments("data.batch_size", "model.hidden")


def test_add_lightning_class_args_link_arguments_and_set_defaults(tmp_path):
    from dltrain.callbacks import EarlyStopping

    cli = _LinkedCLI(CliTask, CliData, trainer_defaults=_defaults(tmp_path), run=False,
                     args=["--data.batch_size", "12", "--early_stopping.patience", "3"])
    stops = [c for c in cli.trainer.callbacks if isinstance(c, EarlyStopping)]
    assert len(stops) == 1 and stops[0].patience == 3 and stops[0].monitor == "val/loss"
    assert cli.model.hparams.hidden == 12  # linked from data.batch_size
    with pytest.raises(TypeError, match="add_lightning_class_args"):
        cli.parser.add_lightning_class_args(dict, "nope")


def test_lightning_class_paths_in_yaml_and_on_the_command_line(tmp_path, capsys):
    from dltrain.callbacks import EarlyStopping, LearningRateMonitor
    from dltrain.loggers import CSVLogger

    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "trainer": {
            "max_epochs": 1,
            "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                       "init_args": {"save_dir": str(tmp_path / "logs")}},
            "callbacks": [{"class_path": "lightning.pytorch.callbacks.EarlyStopping",
                           "init_args": {"monitor": "val/loss"}}],
        },
        "model": {"class_path": "tests.test_config_cli.CliTask"},
    }))
    args = ["--config", str(config), "--trainer.callbacks+=pytorch_lightning.callbacks.LearningRateMonitor"]
    cli = dltrain.CLI(None, CliData, trainer_defaults=_defaults(tmp_path), run=False, args=args)
    kinds = [type(c) for c in cli.trainer.callbacks]
    assert EarlyStopping in kinds and LearningRateMonitor in kinds
    assert isinstance(cli.trainer.logger, CSVLogger)
    assert dltrain.cli.dltrain_class_path("lightning.pytorch.LightningModule") == "dltrain.Task"
    assert dltrain.cli.dltrain_class_path("lightning.pytorch.callbacks.early_stopping.EarlyStopping") == \
        "dltrain.callbacks.EarlyStopping"
    assert dltrain.cli.dltrain_class_path("lightning.pytorch.demos.Transformer") == "lightning.pytorch.demos.Transformer"
    # --print_config shows dltrain's classes.
    with pytest.raises(SystemExit):
        dltrain.CLI(None, CliData, trainer_defaults=_defaults(tmp_path), run=False, args=[*args, "--print_config"])
    printed = capsys.readouterr().out
    assert "dltrain.callbacks.EarlyStopping" in printed and "lightning.pytorch" not in printed
