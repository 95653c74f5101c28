"""Experiment loggers: where the metrics logged with ``Task.log`` go."""

from dltrain._refusals import refused_class
from dltrain.loggers.base import Logger
from dltrain.loggers.csv import CSVLogger
from dltrain.loggers.mlflow import MLFlowLogger
from dltrain.loggers.tensorboard import TensorBoardLogger
from dltrain.loggers.wandb import WandbLogger

# Refused on purpose, with the reason when built (dltrain._refusals).
CometLogger = refused_class("lightning.pytorch.loggers.CometLogger")
LitLogger = refused_class("lightning.pytorch.loggers.LitLogger")

__all__ = ["CSVLogger", "CometLogger", "LitLogger", "Logger", "MLFlowLogger", "TensorBoardLogger", "WandbLogger"]
