"""`DataModule`: the data side of a run (Lightning's ``LightningDataModule``, with the same hooks)."""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from dltrain._hparams import HyperparametersMixin
from dltrain.errors import ConfigurationError

if TYPE_CHECKING:
    from torch.utils.data import Dataset

    from dltrain.trainer import Trainer

__all__ = ["DataModule"]


class DataModule(HyperparametersMixin):
    """Where the data of a run comes from: download once, split, and make the loaders.

    The Trainer calls ``prepare_data()`` once per machine (on local rank 0; once per job with
    ``prepare_data_per_node = False``), then ``setup(stage)`` on every rank, then asks for the loaders of the
    stage (``train_dataloader()`` and ``val_dataloader()`` for ``fit``), and ``teardown(stage)`` at the end.
    ``state_dict``/``load_state_dict`` put the data module's own state in checkpoints, with its hyperparameters
    (``save_hyperparameters``), so that `load_from_checkpoint` can build it again. Its batch-transfer hooks, when it
    overrides them, run instead of the task's (as in Lightning: batch augmentation on the device belongs here).

    Example:
        >>> class Digits(DataModule):
        ...     def __init__(self, batch_size: int = 32):
        ...         super().__init__()
        ...         self.save_hyperparameters()
        ...     def setup(self, stage):
        ...         self.train, self.val = make_splits()
        ...     def train_dataloader(self):
        ...         return DataLoader(self.train, batch_size=self.hparams.batch_size, shuffle=True)
        ...     def val_dataloader(self):
        ...         return DataLoader(self.val, batch_size=256)
        >>> # trainer.fit(task, datamodule=Digits())
    """

    prepare_data_per_node: bool = True
    name: str | None = None
    #: Where a checkpoint keeps the data module's hyperparameters, and the name of the attribute they were set as.
    CHECKPOINT_HYPER_PARAMS_KEY = "datamodule_hyper_parameters"
    CHECKPOINT_HYPER_PARAMS_NAME = "datamodule_hparams_name"
    CHECKPOINT_HYPER_PARAMS_TYPE = "datamodule_hparams_type"

    def __init__(self) -> None:
        super().__init__()
        self.trainer: Trainer | None = None

    @classmethod
    def from_datasets(
        cls,
        train_dataset: Dataset[Any] | Sequence[Dataset[Any]] | Mapping[str, Dataset[Any]] | None = None,
        val_dataset: Dataset[Any] | Sequence[Dataset[Any]] | None = None,
        test_dataset: Dataset[Any] | Sequence[Dataset[Any]] | None = None,
        predict_dataset: Dataset[Any] | Sequence[Dataset[Any]] | None = None,
        batch_size: int = 1,
        num_workers: int = 0,
        **datamodule_kwargs: Any,
    ) -> DataModule:
        """A data module whose loaders read these datasets (Lightning's ``LightningDataModule.from_datasets``).

        The training loaders shuffle (map-style datasets); the others keep the order. A list (or, for training, a
        dict) of datasets gives a list (a dict) of loaders. ``datamodule_kwargs`` go to the constructor, those it
        accepts.

        Example:
            >>> import torch
            >>> from torch.utils.data import TensorDataset
            >>> data = TensorDataset(torch.arange(10.0))
            >>> dm = DataModule.from_datasets(train_dataset=data, val_dataset=[data, data], batch_size=4)
            >>> len(dm.train_dataloader()), len(dm.val_dataloader())
            (3, 2)
        """
        from torch.utils.data import DataLoader, IterableDataset

        def loader(dataset: Any, shuffle: bool) -> DataLoader[Any]:
            shuffle &= not isinstance(dataset, IterableDataset)
            return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
                              persistent_workers=num_workers > 0)

        def loaders(datasets: Any, shuffle: bool) -> Any:
            if isinstance(datasets, Mapping):
                return {key: loader(ds, shuffle) for key, ds in datasets.items()}
            if isinstance(datasets, Sequence) and not isinstance(datasets, torch.utils.data.Dataset):
                return [loader(ds, shuffle) for ds in datasets]
            return loader(datasets, shuffle)

        accepted = inspect.signature(cls.__init__).parameters
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values())
        kwargs = {k: v for k, v in datamodule_kwargs.items() if takes_any or k in accepted}
        datamodule = cls(**kwargs)
        # Instance attributes shadow the class's methods: each stage given a dataset gets its loaders.
        if train_dataset is not None:
            datamodule.train_dataloader = lambda: loaders(train_dataset, True)  # type: ignore[method-assign]
        if val_dataset is not None:
            datamodule.val_dataloader = lambda: loaders(val_dataset, False)  # type: ignore[method-assign]
        if test_dataset is not None:
            datamodule.test_dataloader = lambda: loaders(test_dataset, False)  # type: ignore[method-assign]
        if predict_dataset is not None:
            datamodule.predict_dataloader = lambda: loaders(predict_dataset, False)  # type: ignore[method-assign]
        return datamodule

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: str | os.PathLike[str], map_location: Any = None,
                             hparams_file: str | os.PathLike[str] | None = None,
                             storage_options: dict[str, Any] | None = None, **kwargs: Any) -> DataModule:
        """The data module a checkpoint was written with, given its saved state (``load_state_dict``).

        It is built from the checkpoint's data module hyperparameters (``kwargs`` override them; ``hparams_file``,
        YAML, replaces them). ``checkpoint_path`` may be a URL of an object store (``storage_options`` go to fsspec); ``map_location`` is
        accepted for Lightning's signature (a data module holds no tensors of the checkpoint).

        Raises:
            CheckpointError: the file is not a checkpoint, or the saved hyperparameters do not build this class.
        """
        from dltrain import checkpoint as ckpt_io

        checkpoint = ckpt_io.load(checkpoint_path, storage_options)
        stored = dict(checkpoint.get(cls.CHECKPOINT_HYPER_PARAMS_KEY) or {})
        where = f"the data module hyperparameters in {str(hparams_file or checkpoint_path)!r}"
        datamodule: DataModule = ckpt_io.build_from_hparams(cls, stored, kwargs, hparams_file, where)
        if checkpoint.get("datamodule"):
            datamodule.load_state_dict(checkpoint["datamodule"])
        return datamodule

    def prepare_data(self) -> None:
        """Download or write data to disk: called on one process per machine (see the class docstring)."""

    def setup(self, stage: str) -> None:
        """Build datasets for ``stage`` (``"fit"``, ``"validate"``, ``"test"`` or ``"predict"``) on every rank."""

    def teardown(self, stage: str) -> None:
        """Clean up after ``stage``."""

    def train_dataloader(self) -> Any:
        """The training loader(s). The Trainer skips this default: a stage that needs it says so."""
        raise ConfigurationError(f"{type(self).__name__} has no train_dataloader(): define it to give training data")

    def val_dataloader(self) -> Any:
        """The validation loader(s). The Trainer skips this default: a stage that needs it says so."""
        raise ConfigurationError(f"{type(self).__name__} has no val_dataloader(): define it to give validation data")

    def test_dataloader(self) -> Any:
        """The test loader(s). The Trainer skips this default: a stage that needs it says so."""
        raise ConfigurationError(f"{type(self).__name__} has no test_dataloader(): define it to give test data")

    def predict_dataloader(self) -> Any:
        """The prediction loader(s). The Trainer skips this default: a stage that needs it says so."""
        raise ConfigurationError(f"{type(self).__name__} has no predict_dataloader(): define it to give prediction data")

    def state_dict(self) -> dict[str, Any]:
        """State to keep in checkpoints."""
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Transform a batch before it moves to the device; overriding it here replaces the task's hook."""
        return batch

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        """Move ``batch`` to ``device``; overriding it here replaces the task's hook."""
        from lightning.fabric.utilities.apply_func import move_data_to_device

        return move_data_to_device(batch, device)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Transform a batch once it is on the device (augmentation); overriding it here replaces the task's hook."""
        return batch

    def on_exception(self, exception: BaseException) -> None:
        """Called when a stage stops on an exception (after the callbacks' ``on_exception``)."""
