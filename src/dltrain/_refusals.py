"""The Lightning names dltrain refuses on purpose, each with its reason: the one list.

Everything else of ``lightning.pytorch`` (its modules ``callbacks``, ``loggers``, ``profilers``, ``tuner``, and the
members of ``LightningModule`` and ``Trainer``) exists in dltrain under the rename of the README's "Coming from
Lightning" section; ``tests/lightning_compat/test_api_surface.py`` enumerates Lightning's names from the installed
package and fails on any that is neither there nor here, and checks that the README shows this list.

A refused name still exists where Lightning has it, so that code importing it gets to the point where it uses it,
and then raises a `ConfigurationError` that names the reason and what to use instead.
"""

from __future__ import annotations

from typing import Any, NoReturn

from dltrain.errors import ConfigurationError

__all__ = ["REFUSED", "refuse", "refused_class"]

_FIT_LOOP = ("Lightning's loop objects (their progress counters and private state) are not dltrain's: "
             "read trainer.loop_state (epoch, global_step, batches_done), trainer.max_epochs/max_steps, and the "
             "hooks; the loops are in dltrain.loop")

#: Lightning name (``module.Name`` or ``Class.member``) -> why dltrain refuses it and what to use instead.
REFUSED: dict[str, str] = {
    "lightning.pytorch.loggers.CometLogger": (
        "comet_ml is a hosted service dltrain does not depend on: use WandbLogger, MLFlowLogger, "
        "TensorBoardLogger or CSVLogger, or subclass dltrain.loggers.Logger"),
    "lightning.pytorch.loggers.LitLogger": (
        "logs to Lightning AI's hosted platform (litlogger): use WandbLogger, MLFlowLogger, TensorBoardLogger "
        "or CSVLogger"),
    "lightning.pytorch.profilers.XLAProfiler": (
        "profiles TPU (XLA) programs; dltrain runs on CPU, CUDA and MPS only: use PyTorchProfiler"),
    "lightning.pytorch.LightningModule.to_tensorrt": (
        "TensorRT export needs torch_tensorrt and NVIDIA's TensorRT, which dltrain does not depend on: export with "
        "to_onnx() or to_torchscript() and build the engine with TensorRT's own tools"),
    "lightning.pytorch.LightningModule.configure_sharded_model": (
        "deprecated in Lightning 2 in favour of configure_model, which dltrain calls (also under "
        'strategy="fsdp2"): move the code there'),
    "lightning.pytorch.Trainer.fit_loop": _FIT_LOOP,
    "lightning.pytorch.Trainer.validate_loop": _FIT_LOOP,
    "lightning.pytorch.Trainer.test_loop": _FIT_LOOP,
    "lightning.pytorch.Trainer.predict_loop": _FIT_LOOP,
    "lightning.pytorch.Trainer(model_registry=)": (
        "uploads checkpoints to Lightning AI's model registry (litmodels): keep checkpoints with ModelCheckpoint "
        "and upload them with your registry's own client"),
    # Trainer arguments and values (not names Lightning's modules export, but refused the same way).
    'Trainer(accelerator="tpu"/"hpu"/"ipu")': (
        "TPU (XLA), Habana HPU and Graphcore IPU accelerators: dltrain runs on CPU, CUDA and MPS"),
    'Trainer(strategy="deepspeed"/"fsdp"/"xla"/"hpu_*")': (
        'DeepSpeed, FSDP1, XLA and HPU strategies: use strategy="fsdp2" (parameters, gradients and optimizer '
        'state sharded, resharding checkpoints), "ddp", or a lightning.fabric Strategy instance'),
}


def refuse(name: str) -> NoReturn:
    """Raise the `ConfigurationError` of a refused Lightning name."""
    raise ConfigurationError(f"{name} is not supported by dltrain: {REFUSED[name]}")


def refused_class(lightning_name: str) -> type:
    """A class standing where Lightning has ``lightning_name``: importable, and raising the reason when built."""
    short = lightning_name.rsplit(".", 1)[1]

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        refuse(lightning_name)

    return type(short, (), {"__init__": __init__, "__doc__": f"Refused: {REFUSED[lightning_name]}."})
