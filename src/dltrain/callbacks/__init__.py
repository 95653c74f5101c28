"""Built-in callbacks. Features are callbacks: the Trainer does not grow a flag per feature."""

from dltrain.callbacks.base import Callback
from dltrain.callbacks.checkpoint import ModelCheckpoint
from dltrain.callbacks.compile import Compile
from dltrain.callbacks.early_stopping import EarlyStopping
from dltrain.callbacks.finetuning import BackboneFinetuning, BaseFinetuning
from dltrain.callbacks.ledger import SampleLedger
from dltrain.callbacks.lr_monitor import LearningRateMonitor
from dltrain.callbacks.preemption import Preempted, Preemption
from dltrain.callbacks.profiler import PyTorchProfiler, SimpleProfiler
from dltrain.callbacks.progress import ProgressBar, TQDMProgressBar
from dltrain.callbacks.summary import ModelSummary
from dltrain.callbacks.throughput import ThroughputMonitor
from dltrain.callbacks.timer import Timer

__all__ = [
    "BackboneFinetuning",
    "BaseFinetuning",
    "Callback",
    "Compile",
    "EarlyStopping",
    "LearningRateMonitor",
    "ModelCheckpoint",
    "ModelSummary",
    "Preempted",
    "Preemption",
    "ProgressBar",
    "PyTorchProfiler",
    "SampleLedger",
    "SimpleProfiler",
    "TQDMProgressBar",
    "ThroughputMonitor",
    "Timer",
]
