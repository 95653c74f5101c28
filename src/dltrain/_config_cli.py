"""`CLI`: a config-file command line for a Task, a DataModule and the Trainer (Lightning's ``LightningCLI``).

Built on jsonargparse, as ``LightningCLI`` is (``pip install dltrain[cli]``): the arguments of the Task's, the
DataModule's and the Trainer's ``__init__`` (their type hints and defaults) become ``--model.*``, ``--data.*`` and
``--trainer.*``; a YAML file given with ``--config`` sets any of them; ``--print_config`` prints the whole
configuration and exits. The run's configuration is saved as ``config.yaml`` in its log folder.

    python train.py fit --config config.yaml --trainer.max_epochs 3 --model.lr 0.1 --data.batch_size 8
    python train.py fit --print_config > config.yaml
    python train.py test --ckpt_path lightning_logs/version_0/checkpoints/last.ckpt
"""

from __future__ import annotations

import os
import random
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from importlib import import_module
from typing import TYPE_CHECKING, Any

import torch

from dltrain.callbacks.base import Callback, TrainerView
from dltrain.task import Task
from dltrain.trainer import Trainer, seed_everything

if TYPE_CHECKING:
    from jsonargparse import ArgumentParser, Namespace

__all__ = ["CLI", "SaveConfigCallback", "dltrain_class_path"]

ArgsType = list[str] | dict[str, Any] | None

# Arguments of the Trainer's stage methods that the CLI fills itself (the task and the data).
_FILLED_BY_CLI = {"model", "task", "datamodule", "dataloaders", "train_dataloaders", "val_dataloaders"}
_SUBCOMMANDS = ("fit", "validate", "test", "predict")


def _jsonargparse() -> Any:
    try:
        import jsonargparse
    except ImportError as err:
        raise ModuleNotFoundError(
            "dltrain.CLI is built on jsonargparse (as LightningCLI is): pip install 'dltrain[cli]'"
        ) from err
    return jsonargparse


def _jsonargparse_version() -> tuple[int, ...]:
    from importlib.metadata import version

    return tuple(int(p) for p in version("jsonargparse").split(".")[:2] if p.isdigit())


def _datamodule_base() -> type | None:
    try:
        return import_module("dltrain.datamodule").DataModule  # type: ignore[no-any-return]
    except (ImportError, AttributeError):
        return None


# Lightning's class paths in configs and on the command line (``lightning.pytorch.callbacks.EarlyStopping``,
# ``pytorch_lightning.loggers.CSVLogger``): resolved to dltrain's class of the same name, without importing
# Lightning's. ``lightning.pytorch.<m>[.<sub>].<Name>`` -> ``dltrain.<m>.<Name>`` for these modules, else
# ``dltrain.<Name>``; Lightning's class names that dltrain renamed are renamed.
_LIGHTNING_PATH = re.compile(r"\b(?:lightning\.pytorch|pytorch_lightning)(?:\.[A-Za-z_]\w*)+")
_LIGHTNING_MODULES = ("callbacks", "loggers", "profilers", "tuner", "cli", "strategies", "plugins")
_RENAMED = {"LightningModule": "Task", "LightningDataModule": "DataModule", "LightningCLI": "CLI"}


def dltrain_class_path(path: str) -> str:
    """The dltrain class path for a Lightning class path (``path`` itself when dltrain has no such class)."""
    parts = path.split(".")
    parts = parts[2:] if parts[0] == "lightning" else parts[1:]
    if not parts:
        return path
    name = _RENAMED.get(parts[-1], parts[-1])
    module = f"dltrain.{parts[0]}" if parts[0] in _LIGHTNING_MODULES and len(parts) > 1 else "dltrain"
    try:
        found = hasattr(import_module(module), name)
    except ImportError:
        found = False
    return f"{module}.{name}" if found else path


def _with_dltrain_paths(value: Any) -> Any:
    """``value`` (a string, or lists/dicts of them) with every Lightning class path replaced (`dltrain_class_path`)."""
    if isinstance(value, str):
        return _LIGHTNING_PATH.sub(lambda m: dltrain_class_path(m.group(0)), value)
    if isinstance(value, Mapping):
        return {k: _with_dltrain_paths(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_with_dltrain_paths(v) for v in value]
    return value


_PARSER_MODE = "dltrain"


def _register_loader() -> None:
    """The parser mode ``"dltrain"``: jsonargparse's YAML loader, then Lightning class paths made dltrain's."""
    jsonargparse = _jsonargparse()
    yaml_loader = jsonargparse.get_loader("yaml")
    jsonargparse.set_loader(_PARSER_MODE, lambda text: _with_dltrain_paths(yaml_loader(text)))


def argument_parser_class() -> type:
    """The dltrain parser: jsonargparse's with Lightning's ``add_lightning_class_args``.

    Built on first use, since jsonargparse is an optional dependency.
    """
    global _PARSER_CLASS
    if _PARSER_CLASS is not None:
        return _PARSER_CLASS
    jsonargparse = _jsonargparse()

    class LightningArgumentParser(jsonargparse.ArgumentParser):  # type: ignore[misc, name-defined]
        """jsonargparse's ``ArgumentParser`` plus Lightning's ``add_lightning_class_args``."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.setdefault("parser_mode", _PARSER_MODE)
            super().__init__(*args, **kwargs)
            self.callback_keys: list[str] = []

        def add_lightning_class_args(self, lightning_class: Any, nested_key: str, subclass_mode: bool = False,
                                     required: bool = True) -> list[str]:
            """Add the arguments of a Callback, Task or DataModule class under ``nested_key`` (Lightning's method).

            A callback's instance is added to the Trainer's callbacks (``--<nested_key>.<arg>`` sets it).
            """
            from dltrain.datamodule import DataModule

            if callable(lightning_class) and not isinstance(lightning_class, type):
                from jsonargparse import class_from_function

                lightning_class = class_from_function(lightning_class)
            if not (isinstance(lightning_class, type) and issubclass(lightning_class, (Callback, Task, DataModule))):
                raise TypeError(
                    f"add_lightning_class_args({lightning_class!r}, {nested_key!r}): expected a subclass of "
                    "dltrain.Callback, dltrain.Task or dltrain.DataModule (Lightning's classes are named by their "
                    "dltrain counterparts)")
            if issubclass(lightning_class, Callback):
                self.callback_keys.append(nested_key)
            if subclass_mode:
                return self.add_subclass_arguments(  # type: ignore[no-any-return]
                    lightning_class, nested_key, fail_untyped=False, required=required)
            return self.add_class_arguments(  # type: ignore[no-any-return]
                lightning_class, nested_key, fail_untyped=False, instantiate=True, sub_configs=True)

    _PARSER_CLASS = LightningArgumentParser
    _register_loader()
    return LightningArgumentParser


_PARSER_CLASS: type | None = None


def _import_class(path: str) -> type:
    module, _, name = path.rpartition(".")
    return getattr(import_module(module), name)  # type: ignore[no-any-return]


def _plain(value: Any) -> Any:
    """A jsonargparse ``Namespace`` (nested) as plain dicts; anything else as it is."""
    jsonargparse = _jsonargparse()
    if isinstance(value, jsonargparse.Namespace):
        return {k: _plain(v) for k, v in vars(value).items()}
    return value


def _free_name(path: str, taken: bool = False) -> str:
    """``<stem>-v<N><ext>`` next to ``path``: the first free N (``taken``: the last one that exists)."""
    stem, ext = os.path.splitext(path)
    n = 1
    while os.path.exists(f"{stem}-v{n}{ext}"):
        n += 1
    return f"{stem}-v{n - 1 if taken else n}{ext}"


def _drop_if_same(original: str, new: str) -> None:
    with open(original, "rb") as a, open(new, "rb") as b:
        same = a.read() == b.read()
    if same:
        os.remove(new)


class SaveConfigCallback(Callback):
    """Save the run's configuration as ``config_filename`` in the Trainer's log folder at ``setup``.

    The folder is the first logger's ``log_dir`` (``default_root_dir`` without a logger). An existing file is an
    error (a second run would otherwise replace the first run's record) unless ``overwrite``. A resumed fit
    (``--ckpt_path``) saves at ``on_fit_start``, once the run it continues (and so its folder) is restored; its
    configuration goes next to the run's first one as ``config-v<N>.yaml`` (nothing when it is the same). Override
    ``save_config(trainer, task, stage)`` to also send the configuration elsewhere (``save_to_log_dir=False``
    to send it only there).
    """

    def __init__(
        self,
        parser: ArgumentParser,
        config: Namespace,
        config_filename: str = "config.yaml",
        overwrite: bool = False,
        multifile: bool = False,
        save_to_log_dir: bool = True,
    ) -> None:
        self.parser = parser
        self.config = config
        self.config_filename = config_filename
        self.overwrite = overwrite
        self.multifile = multifile
        self.save_to_log_dir = save_to_log_dir
        self.already_saved = False

    @staticmethod
    def log_dir(trainer: TrainerView) -> str:
        found = getattr(trainer, "log_dir", None)
        if found:
            return str(found)
        for logger in trainer.loggers:
            if logger.log_dir:
                return logger.log_dir
        return str(trainer.default_root_dir)

    def setup(self, trainer: TrainerView, task: Task, stage: str) -> None:
        if self.already_saved:
            return
        if stage == "fit" and self.config.get("ckpt_path") is not None:
            return  # a resumed fit continues a run whose folder is known once restored: saved at on_fit_start
        self._save(trainer, task, stage, resumed=False)

    def on_fit_start(self, trainer: TrainerView, task: Task) -> None:
        if not self.already_saved:
            self._save(trainer, task, "fit", resumed=True)

    def _save(self, trainer: TrainerView, task: Task, stage: str, resumed: bool) -> None:
        if self.save_to_log_dir:
            path = os.path.join(self.log_dir(trainer), self.config_filename)
            exists = os.path.exists(path)
            if exists and not self.overwrite and not resumed:
                raise RuntimeError(
                    f"{path} exists: it records an earlier run. Pick another log folder (--trainer.default_root_dir "
                    "or a logger version), delete the file, or pass save_config_kwargs={'overwrite': True}"
                )
            if trainer.is_global_zero:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                if exists and resumed and not self.overwrite:
                    # The run's first record stays; this invocation's goes next to it, unless it is the same.
                    self._write(_free_name(path))
                    _drop_if_same(path, _free_name(path, taken=True))
                else:
                    self._write(path)
        if trainer.is_global_zero:
            self.save_config(trainer, task, stage)
        self.already_saved = True

    def _write(self, path: str) -> None:
        # Keep None values in the file (a rerun from it sets them): skip_unset=False, skip_none before 4.49.
        keep_none = "skip_unset" if _jsonargparse_version() >= (4, 49) else "skip_none"
        self.parser.save(self.config, path, overwrite=True, multifile=self.multifile, **{keep_none: False})

    def save_config(self, trainer: TrainerView, task: Task, stage: str) -> None:
        """Send the configuration elsewhere too (a logger, a tracking server): override it."""


class CLI:
    """Build a Task, a DataModule and a Trainer from the command line and a config file, then run a stage.

    Lightning's ``LightningCLI`` with the same arguments and attributes (``cli.model``, ``cli.datamodule``,
    ``cli.trainer``, ``cli.config``, ``cli.config_init``, ``cli.subcommand``, ``cli.parser``); a Lightning script
    ending in ``LightningCLI(Model, DataModule, ...)`` works with ``dltrain.CLI(Model, DataModule, ...)``.

    Args:
        model_class: the Task class (or a base class with ``subclass_mode_model``). ``None``: any Task, chosen
            in the config (``model: {class_path: ..., init_args: ...}``).
        datamodule_class: the DataModule class (or a base class with ``subclass_mode_data``). ``None``: any
            DataModule, optional.
        save_config_callback: the callback class that saves the configuration (``None``: do not save it).
        save_config_kwargs: its keyword arguments (``config_filename``, ``overwrite``, ``multifile``).
        trainer_class: the Trainer class whose ``__init__`` gives the ``--trainer.*`` arguments.
        trainer_defaults: defaults of Trainer arguments (``{"max_epochs": 5}``); callbacks given here are added
            to those of the config.
        seed_everything_default: ``--seed_everything``'s default: ``True`` (a random seed, recorded in the saved
            config), ``False`` (no seeding) or a seed. The seed also seeds the Trainer's data order.
        parser_kwargs: keyword arguments of the jsonargparse parser (e.g. ``default_config_files``), or a dict of
            them per subcommand (``{"fit": {...}}``).
        subclass_mode_model: take any subclass of the model class, by class path.
        subclass_mode_data: take any subclass of the datamodule class, by class path.
        args: the arguments to parse (a list of strings or a dict); ``None`` reads ``sys.argv``.
        run: ``True``: a subcommand (``fit``, ``validate``, ``test``, ``predict``) is expected and run. ``False``:
            only build ``cli.model``, ``cli.datamodule`` and ``cli.trainer``.
        auto_configure_optimizers: add ``--optimizer`` and ``--lr_scheduler`` (any ``torch.optim`` class); when
            given they replace the task's ``configure_optimizers``.

    Override ``add_arguments_to_parser(parser)`` (e.g. ``parser.link_arguments("data.num_classes",
    "model.num_classes", apply_on="instantiate")``), ``before_instantiate_classes()``, ``before_fit()`` /
    ``after_fit()`` (and the same for the other subcommands) as in Lightning.

    Example:
        In a script, ``CLI(MyTask)`` reads ``sys.argv`` (``python train.py fit --config config.yaml``); here the
        arguments are given, with the examples' task class (its ``__init__`` takes ``lr``), and nothing runs:

        >>> cli = CLI(type(task), args=["--trainer.max_epochs=2", "--model.lr=0.1"], run=False)
        >>> cli.trainer.max_epochs, cli.model.hparams.lr
        (2, 0.1)
    """

    def __init__(
        self,
        model_class: type[Task] | Callable[..., Task] | None = None,
        datamodule_class: type | Callable[..., Any] | None = None,
        save_config_callback: type[SaveConfigCallback] | None = SaveConfigCallback,
        save_config_kwargs: dict[str, Any] | None = None,
        trainer_class: type[Trainer] | Callable[..., Trainer] = Trainer,
        trainer_defaults: dict[str, Any] | None = None,
        seed_everything_default: bool | int = True,
        parser_kwargs: dict[str, Any] | dict[str, dict[str, Any]] | None = None,
        subclass_mode_model: bool = False,
        subclass_mode_data: bool = False,
        args: ArgsType = None,
        run: bool = True,
        auto_configure_optimizers: bool = True,
    ) -> None:
        _jsonargparse()
        self.save_config_callback = save_config_callback
        self.save_config_kwargs = save_config_kwargs or {}
        self.trainer_class = trainer_class
        self.trainer_defaults = trainer_defaults or {}
        self.seed_everything_default = seed_everything_default
        self.parser_kwargs = parser_kwargs or {}
        self.auto_configure_optimizers = auto_configure_optimizers

        self.model_class: Any = model_class if model_class is not None else Task
        self.subclass_mode_model = model_class is None or subclass_mode_model
        data_base = datamodule_class if datamodule_class is not None else _datamodule_base()
        self.datamodule_class: Any = data_base
        self.subclass_mode_data = datamodule_class is None or subclass_mode_data
        self._datamodule_required = datamodule_class is not None

        self._subcommand_parsers: dict[str, ArgumentParser] = {}
        self.setup_parser(run)
        self.parse_arguments(self.parser, args)

        self.subcommand: str | None = self.config["subcommand"] if run else None
        self._set_seed()
        self.before_instantiate_classes()
        self.instantiate_classes()
        if self.subcommand is not None:
            self._run_subcommand(self.subcommand)

    # ------------------------------------------------------------------ the parser
    def _parser_kwargs_for(self, subcommand: str | None) -> dict[str, Any]:
        kwargs = self.parser_kwargs
        if any(name in kwargs for name in _SUBCOMMANDS):
            return dict(kwargs.get(subcommand, {})) if subcommand else {}
        return dict(kwargs)

    def init_parser(self, **kwargs: Any) -> ArgumentParser:
        """A parser with ``--config`` (and, with it, ``--print_config``)."""
        jsonargparse = _jsonargparse()
        kwargs.setdefault("allow_abbrev", False)  # a mistyped --trainer.max_epoch is an error, not a guess
        parser = argument_parser_class()(**kwargs)
        parser.add_argument(
            "-c", "--config", action=jsonargparse.ActionConfigFile, help="A YAML file of arguments (repeatable)."
        )
        return parser

    def setup_parser(self, add_subcommands: bool) -> None:
        main_kwargs = self._parser_kwargs_for(None)
        if not add_subcommands:
            self.parser = self.init_parser(**main_kwargs)
            self._add_arguments(self.parser)
            return
        self.parser = self.init_parser(**{k: v for k, v in main_kwargs.items() if k != "default_config_files"})
        commands = self.parser.add_subcommands(required=True, dest="subcommand")
        for name, (method, description) in self.subcommands().items():
            sub = self.init_parser(**self._parser_kwargs_for(name) or main_kwargs)
            self._add_arguments(sub)
            sub.add_method_arguments(
                self.trainer_class, method, skip=set(_FILLED_BY_CLI), fail_untyped=False  # type: ignore[arg-type]
            )
            self._subcommand_parsers[name] = sub
            commands.add_subcommand(name, sub, help=description)

    @staticmethod
    def subcommands() -> dict[str, tuple[str, str]]:
        """Subcommand -> (Trainer method, help)."""
        return {
            "fit": ("fit", "Train the model (and validate it)."),
            "validate": ("validate", "Run one evaluation epoch on the validation data."),
            "test": ("test", "Run one evaluation epoch on the test data."),
            "predict": ("predict", "Run inference on the predict data."),
        }

    def _add_arguments(self, parser: ArgumentParser) -> None:
        self.add_default_arguments_to_parser(parser)
        self.add_core_arguments_to_parser(parser)
        self.add_arguments_to_parser(parser)

    def add_default_arguments_to_parser(self, parser: ArgumentParser) -> None:
        parser.add_argument(
            "--seed_everything",
            type=bool | int,
            default=self.seed_everything_default,
            help="Seed for Python, NumPy and torch (True: a random one, recorded in the saved config; "
            "False: no seeding).",
        )

    def add_core_arguments_to_parser(self, parser: ArgumentParser) -> None:
        parser.add_class_arguments(
            self.trainer_class, "trainer", fail_untyped=False, instantiate=False, sub_configs=True  # type: ignore[arg-type]
        )
        defaults = {f"trainer.{k}": v for k, v in self.trainer_defaults.items() if k != "callbacks"}
        if defaults:
            parser.set_defaults(defaults)
        self._add_class_args(parser, self.model_class, "model", self.subclass_mode_model, required=True)
        if self.datamodule_class is not None:
            self._add_class_args(
                parser, self.datamodule_class, "data", self.subclass_mode_data, required=self._datamodule_required
            )
        if self.auto_configure_optimizers:
            parser.add_subclass_arguments(
                torch.optim.Optimizer, "optimizer", skip={"params"}, instantiate=False, required=False,
                fail_untyped=False,
            )
            parser.add_subclass_arguments(
                (torch.optim.lr_scheduler.LRScheduler, torch.optim.lr_scheduler.ReduceLROnPlateau),
                "lr_scheduler", skip={"optimizer"}, instantiate=False, required=False, fail_untyped=False,
            )

    @staticmethod
    def _add_class_args(parser: ArgumentParser, cls: Any, key: str, subclass_mode: bool, required: bool) -> None:
        if subclass_mode:
            parser.add_subclass_arguments(cls, key, required=required, fail_untyped=False)
        else:
            parser.add_class_arguments(cls, key, fail_untyped=False, sub_configs=True)

    def add_arguments_to_parser(self, parser: ArgumentParser) -> None:
        """Add or link arguments (override it; ``parser.link_arguments(...)`` as in Lightning)."""

    def parse_arguments(self, parser: ArgumentParser, args: ArgsType) -> None:
        # Lightning class paths (lightning.pytorch.callbacks.EarlyStopping) name dltrain's classes; in config
        # files the parser mode's loader does the same.
        if isinstance(args, Mapping):
            self.config = parser.parse_object(_with_dltrain_paths(dict(args)))
        else:
            argv = list(args) if args is not None else sys.argv[1:]
            self.config = parser.parse_args([_with_dltrain_paths(a) for a in argv])

    # ------------------------------------------------------------------ building
    def _config(self) -> Namespace:
        return self.config[self.subcommand] if self.subcommand else self.config

    def _set_seed(self) -> None:
        config = self._config()
        seed = config.get("seed_everything")
        if seed is False or seed is None:
            return
        if seed is True:
            seed = random.randint(0, 2**32 - 1)
            config["seed_everything"] = seed  # the saved config records the seed actually used
        seed_everything(int(seed))
        trainer = config.get("trainer")
        if trainer is not None and "seed" in trainer and trainer["seed"] is None:
            trainer["seed"] = int(seed)  # the Trainer seeds its data order with it too

    def before_instantiate_classes(self) -> None:
        """Called after parsing, before the task, data and trainer are built (override it)."""

    def instantiate_classes(self) -> None:
        """Build ``cli.model``, ``cli.datamodule`` and ``cli.trainer`` from the configuration."""
        parser = self._subcommand_parsers[self.subcommand] if self.subcommand else self.parser
        instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes  # renamed in 4.49
        self.config_init = instantiate(self._config())
        self.datamodule = self.config_init.get("data")
        self.model = self.config_init["model"]
        self._add_configure_optimizers_method_to_model()
        self.trainer = self.instantiate_trainer()

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """The Trainer of ``trainer.*``, with the callbacks of ``trainer_defaults`` and the config saver added."""
        settings = {k: _plain(v) for k, v in vars(self.config_init["trainer"]).items()}
        settings.update(kwargs)
        callbacks = settings.get("callbacks")
        if callbacks is None:
            callbacks = []
        elif isinstance(callbacks, Callback) or not isinstance(callbacks, Iterable):
            callbacks = [callbacks]
        callbacks = list(callbacks)
        parser = self._subcommand_parsers[self.subcommand] if self.subcommand else self.parser
        for key in getattr(parser, "callback_keys", []):  # add_lightning_class_args(SomeCallback, key)
            value = self.config_init.get(key)
            if value is not None:
                callbacks.extend(value if isinstance(value, list) else [value])
        extra = self.trainer_defaults.get("callbacks", [])
        callbacks.extend(extra if isinstance(extra, Iterable) else [extra])
        if self.save_config_callback is not None and self.subcommand in (None, "fit"):
            parser = self._subcommand_parsers[self.subcommand] if self.subcommand else self.parser
            callbacks.append(self.save_config_callback(parser, self._config(), **self.save_config_kwargs))
        settings["callbacks"] = callbacks
        return self.trainer_class(**settings)

    def _add_configure_optimizers_method_to_model(self) -> None:
        if not self.auto_configure_optimizers:
            return
        config = self._config()
        optimizer_spec = _plain(config.get("optimizer"))
        scheduler_spec = _plain(config.get("lr_scheduler"))
        if not optimizer_spec:
            if scheduler_spec:
                raise ValueError("--lr_scheduler needs --optimizer (the scheduler is built on that optimizer)")
            return
        model = self.model
        cli_configure = self.configure_optimizers

        def configure_optimizers() -> Any:
            optimizer = _import_class(optimizer_spec["class_path"])(
                model.parameters(), **(optimizer_spec.get("init_args") or {})
            )
            scheduler = None
            if scheduler_spec:
                scheduler = _import_class(scheduler_spec["class_path"])(
                    optimizer, **(scheduler_spec.get("init_args") or {})
                )
            return cli_configure(model, optimizer, scheduler)

        model.configure_optimizers = configure_optimizers  # type: ignore[method-assign]

    @staticmethod
    def configure_optimizers(model: Task, optimizer: torch.optim.Optimizer, lr_scheduler: Any = None) -> Any:
        """What the task's ``configure_optimizers`` returns when ``--optimizer`` is given (override to change)."""
        if lr_scheduler is None:
            return optimizer
        if isinstance(lr_scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            monitor = getattr(lr_scheduler, "monitor", None)
            if monitor is None:
                raise ValueError(
                    "--lr_scheduler ReduceLROnPlateau needs a metric to watch: override CLI.configure_optimizers "
                    "and return {'optimizer': ..., 'lr_scheduler': {'scheduler': ..., 'monitor': 'val/loss'}}"
                )
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": lr_scheduler, "monitor": monitor}}
        return {"optimizer": optimizer, "lr_scheduler": lr_scheduler}

    # ------------------------------------------------------------------ running
    def _run_subcommand(self, subcommand: str) -> None:
        before = getattr(self, f"before_{subcommand}", None)
        if callable(before):
            before()
        method = getattr(self.trainer, self.subcommands()[subcommand][0])
        kwargs = {k: v for k, v in vars(self.config_init).items() if k in self._method_args(subcommand)}
        if self.datamodule is not None:
            kwargs["datamodule"] = self.datamodule
        self.result = method(self.model, **kwargs)
        after = getattr(self, f"after_{subcommand}", None)
        if callable(after):
            after()

    def _method_args(self, subcommand: str) -> set[str]:
        import inspect

        method = getattr(self.trainer_class, self.subcommands()[subcommand][0])
        return set(inspect.signature(method).parameters) - _FILLED_BY_CLI - {"self"}


def _version() -> str:
    from dltrain import __version__

    return __version__
