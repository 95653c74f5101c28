"""Experiment loggers: where the metrics logged with ``Task.log`` go."""

from dltrain.loggers.base import Logger
from dltrain.loggers.csv import CSVLogger
from dltrain.loggers.tensorboard import TensorBoardLogger
from dltrain.loggers.wandb import WandbLogger

__all__ = ["CSVLogger", "Logger", "TensorBoardLogger", "WandbLogger"]
