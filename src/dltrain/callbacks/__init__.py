"""Built-in callbacks. Features are callbacks: the Trainer does not grow a flag per feature."""

from dltrain.callbacks.accumulation import GradientAccumulationScheduler
from dltrain.callbacks.base import Callback, Checkpoint, TrainerView
from dltrain.callbacks.checkpoint import ModelCheckpoint
from dltrain.callbacks.compile import Compile
from dltrain.callbacks.device_stats import DeviceStatsMonitor
from dltrain.callbacks.early_stopping import EarlyStopping
from dltrain.callbacks.finders import BatchSizeFinder, LearningRateFinder
from dltrain.callbacks.finetuning import BackboneFinetuning, BaseFinetuning
from dltrain.callbacks.lambda_function import LambdaCallback
from dltrain.callbacks.ledger import SampleLedger
from dltrain.callbacks.lr_monitor import LearningRateMonitor
from dltrain.callbacks.on_exception import OnExceptionCheckpoint
from dltrain.callbacks.prediction_writer import BasePredictionWriter
from dltrain.callbacks.preemption import Preempted, Preemption
from dltrain.callbacks.profiler import PyTorchProfiler, SimpleProfiler
from dltrain.callbacks.progress import ProgressBar, TQDMProgressBar
from dltrain.callbacks.pruning import ModelPruning
from dltrain.callbacks.rich import RichModelSummary, RichProgressBar
from dltrain.callbacks.spike import SpikeDetection, TrainingSpikeException
from dltrain.callbacks.summary import ModelSummary
from dltrain.callbacks.throughput import ThroughputMonitor
from dltrain.callbacks.timer import Timer
from dltrain.callbacks.weight_averaging import EMAWeightAveraging, StochasticWeightAveraging, WeightAveraging

__all__ = [
    "BackboneFinetuning",
    "BaseFinetuning",
    "BasePredictionWriter",
    "BatchSizeFinder",
    "Callback",
    "Checkpoint",
    "Compile",
    "DeviceStatsMonitor",
    "EMAWeightAveraging",
    "EarlyStopping",
    "GradientAccumulationScheduler",
    "LambdaCallback",
    "LearningRateFinder",
    "LearningRateMonitor",
    "ModelCheckpoint",
    "ModelPruning",
    "ModelSummary",
    "OnExceptionCheckpoint",
    "Preempted",
    "Preemption",
    "ProgressBar",
    "PyTorchProfiler",
    "RichModelSummary",
    "RichProgressBar",
    "SampleLedger",
    "SimpleProfiler",
    "SpikeDetection",
    "StochasticWeightAveraging",
    "TQDMProgressBar",
    "ThroughputMonitor",
    "Timer",
    "TrainerView",
    "TrainingSpikeException",
    "WeightAveraging",
]
