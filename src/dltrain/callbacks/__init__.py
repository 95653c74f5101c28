"""Built-in callbacks. Features are callbacks: the Trainer does not grow a flag per feature."""

from dltrain.callbacks.base import Callback
from dltrain.callbacks.checkpoint import ModelCheckpoint

__all__ = ["Callback", "ModelCheckpoint"]
