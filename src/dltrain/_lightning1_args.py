"""Lightning 1.x Trainer arguments that Lightning 2.0 removed, with their 2.x spelling.

The Trainer refuses unknown arguments; for these names its error says what to write instead. The list follows
Lightning's own migration guides ("Upgrade from 1.x to 2.0", regular and advanced users).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def _gpus(value: Any) -> str:
    if value in (0, "0", None, []):
        return "use accelerator='cpu' (or accelerator='gpu', devices=N)"
    return f"use accelerator='gpu', devices={value!r}"


def _devices(accelerator: str, note: str = "") -> Callable[[Any], str]:
    def hint(value: Any) -> str:
        count = "N" if value is None else repr(value)
        return f"use accelerator='{accelerator}', devices={count}{note}"

    return hint


def _resume(value: Any) -> str:
    path = "'path/to.ckpt'" if value is None else repr(value)
    return f"pass the path to fit instead: trainer.fit(task, ..., ckpt_path={path}) (or ckpt_path='last')"


def _same(argument: str) -> Callable[[Any], str]:
    def hint(value: Any) -> str:
        return f"use {argument}={'...' if value is None else repr(value)}"

    return hint


_TUNER = "use dltrain.tuner.Tuner(trainer) (Lightning 2.x: lightning.pytorch.tuner.Tuner), or its callback"

LIGHTNING_1X_ARGUMENTS: dict[str, str | Callable[[Any], str]] = {
    "gpus": _gpus,
    "tpu_cores": _devices("tpu", "; dltrain has no TPU accelerator: use accelerator='cpu', 'gpu' or 'mps'"),
    "ipus": _devices("ipu", "; dltrain has no IPU accelerator: use accelerator='cpu', 'gpu' or 'mps'"),
    "hpus": _devices("hpu", "; dltrain has no HPU accelerator: use accelerator='cpu', 'gpu' or 'mps'"),
    "num_processes": _devices("cpu"),
    "auto_select_gpus": lambda _: "use devices='auto' (or a list of device indices)",
    "distributed_backend": lambda v: f"use strategy={'...' if v is None else repr(v)}",
    "resume_from_checkpoint": _resume,
    "replace_sampler_ddp": _same("use_distributed_sampler"),
    "reload_dataloaders_every_epoch": lambda _: "use reload_dataloaders_every_n_epochs=1",
    "checkpoint_callback": _same("enable_checkpointing"),
    "weights_summary": lambda _: "use enable_model_summary (or a ModelSummary(max_depth=...) callback)",
    "progress_bar_refresh_rate": lambda _: ("add a ProgressBar(refresh_rate=...) callback, or pass "
                                            "enable_progress_bar=False to turn the bar off"),
    "process_position": lambda _: "pass it to the progress bar callback: ProgressBar(process_position=...)",
    "terminate_on_nan": lambda _: "use detect_anomaly=True (dltrain stops on a non-finite loss by itself)",
    "stochastic_weight_avg": lambda _: "add the StochasticWeightAveraging callback to callbacks=[...]",
    "flush_logs_every_n_steps": lambda _: "pass it to the logger, if it takes one",
    "log_gpu_memory": lambda _: "add the DeviceStatsMonitor callback",
    "weights_save_path": lambda _: "use ModelCheckpoint(dirpath=...) in callbacks=[...]",
    "auto_lr_find": lambda _: _TUNER + " LearningRateFinder",
    "auto_scale_batch_size": lambda _: _TUNER + " BatchSizeFinder",
    "track_grad_norm": lambda _: ("log the norms yourself in on_before_optimizer_step (Lightning 2.x: "
                                  "lightning.pytorch.utilities.grad_norm)"),
    "amp_backend": lambda _: "drop it: precision='16-mixed' or 'bf16-mixed' uses torch.autocast",
    "amp_level": lambda _: "drop it: precision='16-mixed' or 'bf16-mixed' uses torch.autocast",
    "move_metrics_to_cpu": lambda _: "drop it: logged values stay on the device until a logging step reads them",
    "multiple_trainloader_mode": lambda _: ("wrap the training loaders in a combined loader with that mode "
                                            "(Lightning 2.x: CombinedLoader(loaders, mode=...))"),
    "prepare_data_per_node": lambda _: "set prepare_data_per_node on the DataModule or the Task instead",
    "truncated_bptt_steps": lambda _: "use manual optimization (automatic_optimization = False)",
}


def lightning1_hint(name: str, value: Any) -> str | None:
    """``'gpus' (Lightning 1.x): use accelerator='gpu', devices=1`` for a removed argument, else ``None``."""
    hint = LIGHTNING_1X_ARGUMENTS.get(name)
    if hint is None:
        return None
    text = hint if isinstance(hint, str) else hint(value)
    return f"{name!r} (Lightning 1.x): {text}"
