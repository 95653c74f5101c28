"""`DataModule`: the data side of a run (Lightning's ``LightningDataModule``, with the same hooks)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dltrain._hparams import HyperparametersMixin
from dltrain.errors import ConfigurationError

if TYPE_CHECKING:
    from dltrain.trainer import Trainer

__all__ = ["DataModule"]


class DataModule(HyperparametersMixin):
    """Where the data of a run comes from: download once, split, and make the loaders.

    The Trainer calls ``prepare_data()`` once per machine (on local rank 0; once per job with
    ``prepare_data_per_node = False``), then ``setup(stage)`` on every rank, then asks for the loaders of the
    stage (``train_dataloader()`` and ``val_dataloader()`` for ``fit``), and ``teardown(stage)`` at the end.
    ``state_dict``/``load_state_dict`` put the data module's own state in checkpoints.

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

    def __init__(self) -> None:
        super().__init__()
        self.trainer: Trainer | None = None

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
