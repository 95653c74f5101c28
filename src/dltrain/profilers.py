"""Lightning's ``lightning.pytorch.profilers`` names: the profilers are callbacks (``dltrain.callbacks.profiler``).

``Trainer(profiler="simple" | "advanced" | "pytorch")`` or an instance of one of these; ``trainer.profiler`` is the
one in use (a `PassThroughProfiler` when none). ``XLAProfiler`` (TPU) is refused: see ``dltrain._refusals``.
"""

from dltrain._refusals import refused_class
from dltrain.callbacks.profiler import (
    AdvancedProfiler,
    PassThroughProfiler,
    Profiler,
    PyTorchProfiler,
    SimpleProfiler,
)

XLAProfiler = refused_class("lightning.pytorch.profilers.XLAProfiler")

__all__ = ["AdvancedProfiler", "PassThroughProfiler", "Profiler", "PyTorchProfiler", "SimpleProfiler", "XLAProfiler"]
