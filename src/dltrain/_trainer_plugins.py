"""``Trainer(plugins=...)``: Lightning's plugins that have a meaning on Fabric go to it; the others are refused.

Each refusal names the plugin and the reason.

Lightning takes four kinds (its accelerator connector): a precision plugin, a ``CheckpointIO``, a
``ClusterEnvironment`` and a ``LayerSync``, at most one of each. Here:

- precision: Fabric's plugins (``lightning.fabric.plugins``) as they are; Lightning's Trainer-side ones
  (``lightning.pytorch.plugins``: ``Precision``, ``MixedPrecision``, ``HalfPrecision``, ``DoublePrecision``) as
  Fabric's equivalent with the same settings (their ``backward``/``optimizer_step`` take a Trainer's arguments,
  not Fabric's); the other Trainer-side ones are refused, naming the Fabric plugin to pass instead.
  With ``precision=`` as well: refused, as in Lightning.
- cluster environments: to Fabric, which owns them.
- ``CheckpointIO``: dltrain writes and reads checkpoints itself (atomic writes, ``weights_only`` loading, sharded
  checkpoints through DCP), so a CheckpointIO would never be called. ``TorchCheckpointIO`` (``torch.save`` and
  ``torch.load``, Lightning's default) is what dltrain does already and is accepted; any other is refused.
- ``TorchSyncBatchNorm`` is ``sync_batchnorm=True``; another ``LayerSync`` is refused.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from dltrain.errors import ConfigurationError

__all__ = ["ResolvedPlugins", "resolve_plugins"]


@dataclass
class ResolvedPlugins:
    """What ``plugins=`` comes to: plugins for Fabric, the precision name, and ``sync_batchnorm``."""

    fabric: list[Any] = field(default_factory=list)
    precision: str | None = None  # from a precision plugin (None: none given)
    sync_batchnorm: bool = False
    async_checkpoints: bool = False  # Lightning's AsyncCheckpointIO: every ModelCheckpoint saves in the background


def resolve_plugins(plugins: Any, precision: Any, sync_batchnorm: bool) -> ResolvedPlugins:
    """Sort ``plugins`` (one or an iterable) into what Fabric gets; raise `ConfigurationError` for the others."""
    out = ResolvedPlugins(sync_batchnorm=sync_batchnorm)
    if plugins is None:
        return out
    from lightning.fabric.plugins import CheckpointIO, TorchCheckpointIO
    from lightning.fabric.plugins.environments import ClusterEnvironment
    from lightning.fabric.plugins.precision import Precision

    given = [plugins] if isinstance(plugins, str) or not isinstance(plugins, Iterable) else list(plugins)
    kinds: Counter[str] = Counter()
    for plugin in given:
        name = type(plugin).__name__
        if isinstance(plugin, Precision):
            kinds["Precision"] += 1
            fabric_plugin = _fabric_precision(plugin)
            out.fabric.append(fabric_plugin)
            out.precision = str(getattr(fabric_plugin, "precision", "32-true"))
        elif isinstance(plugin, ClusterEnvironment):
            kinds["ClusterEnvironment"] += 1
            out.fabric.append(plugin)
        elif isinstance(plugin, CheckpointIO):
            kinds["CheckpointIO"] += 1
            from dltrain._async_checkpoint import is_async_checkpoint_io

            if is_async_checkpoint_io(plugin):
                # Mapped onto ModelCheckpoint(async_save=True) for every checkpoint callback (the Trainer does
                # it); the IO it wraps, if any, must be what dltrain does anyway.
                out.async_checkpoints = True
                wrapped = getattr(plugin, "checkpoint_io", None)
                if wrapped is None or type(wrapped) is TorchCheckpointIO:
                    continue
                shown = f"{name}({type(wrapped).__name__}(...))"
            else:
                shown = f"{name}(...)"
            if type(plugin) is not TorchCheckpointIO:
                raise ConfigurationError(
                    f"Trainer(plugins=[{shown}]): dltrain writes and reads checkpoints itself (atomic writes, "
                    "loading with weights_only, sharded checkpoints through torch.distributed.checkpoint), so a "
                    "CheckpointIO plugin would never be called; remove it (TorchCheckpointIO, torch.save/torch.load, "
                    "is what dltrain does and is accepted)")
        elif _is_layer_sync(plugin):
            kinds["LayerSync"] += 1
            if name != "TorchSyncBatchNorm":
                raise ConfigurationError(
                    f"Trainer(plugins=[{name}(...)]): dltrain synchronises only batch norm layers "
                    "(TorchSyncBatchNorm, or sync_batchnorm=True); a custom LayerSync is not applied")
            out.sync_batchnorm = True
        else:
            raise ConfigurationError(
                f"Trainer(plugins=[{plugin!r}]): not a plugin dltrain can use; plugins are a Precision plugin, a "
                "CheckpointIO, a ClusterEnvironment or a LayerSync (Lightning's four kinds)"
                + ("; a precision name goes to Trainer(precision=...)" if isinstance(plugin, str) else ""))
    repeated = sorted(k for k, n in kinds.items() if n > 1)
    if repeated:
        raise ConfigurationError(f"Trainer(plugins=...): more than one {', '.join(repeated)} plugin; give one of each")
    if out.precision is not None and precision is not None:
        raise ConfigurationError(
            f"Trainer(precision={precision!r}) and a precision plugin in plugins=: choose one (as in Lightning)")
    return out


def _is_layer_sync(plugin: Any) -> bool:
    try:
        from lightning.pytorch.plugins.layer_sync import LayerSync
    except ImportError:  # pragma: no cover - lightning.pytorch is installed with lightning
        return False
    return isinstance(plugin, LayerSync)


def _fabric_precision(plugin: Any) -> Any:
    """Fabric's precision plugin for ``plugin``: itself, or the equivalent of a Trainer-side one."""
    try:
        from lightning.pytorch.plugins import precision as trainer_side
    except ImportError:  # pragma: no cover - lightning.pytorch is installed with lightning
        return plugin
    if not isinstance(plugin, trainer_side.Precision):
        return plugin
    from lightning.fabric.plugins import precision as fabric_side

    kind, given = type(plugin), vars(plugin)
    if kind is trainer_side.Precision:
        return fabric_side.Precision()
    if kind is trainer_side.MixedPrecision:
        return fabric_side.MixedPrecision(precision=given["precision"], device=given["device"],
                                          scaler=given["scaler"])
    if kind is trainer_side.HalfPrecision:
        return fabric_side.HalfPrecision(precision=given["precision"])
    if kind is trainer_side.DoublePrecision:
        return fabric_side.DoublePrecision()
    fabric_name = kind.__name__ if hasattr(fabric_side, kind.__name__) else None
    raise ConfigurationError(
        f"Trainer(plugins=[{kind.__module__}.{kind.__name__}(...)]): dltrain runs on Fabric, and Lightning's "
        "Trainer-side precision plugins take a Trainer's arguments; "
        + (f"pass lightning.fabric.plugins.{fabric_name}(...) with the same settings" if fabric_name
           else "pass Fabric's precision plugin or Trainer(precision=...)"))
