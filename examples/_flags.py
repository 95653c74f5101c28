"""The run flags every example shares: the same names, defaults and help in each (README, "Examples").

Standard library only: an example parses its command line with this before it imports torch, so ``--help`` (and
a mistyped flag) answers at once. What an example generates (shards, tokenizers) goes under ``--data-dir``,
which defaults to ``<root-dir>/data``; logs and checkpoints go under ``--root-dir``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

WORKERS = 2  # loader worker processes per rank, in every example


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """``--help`` shows each default (not ``None``: the help says what happens then)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        return action.help if action.default is None else super()._get_help_string(action)


def parser(description: str | None, epilog: str | None = None) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(description=description, epilog=epilog, formatter_class=HelpFormatter)


def add_run_flags(
    p: argparse.ArgumentParser,
    *,
    root_dir: str,
    max_epochs: int | None,
    max_steps: int | None,
    batch_size: int,
) -> None:
    """The shared flags. Only the run length (``--max-epochs``, ``--max-steps``), the batch size and the root
    folder's name have per-example defaults."""
    run = p.add_argument_group("run (the same flags in every example)")
    run.add_argument("--root-dir", default=root_dir, help="logs and checkpoints go here (each run in logs/version_N)")
    run.add_argument("--data-dir", default=None,
                     help="where the example writes the data it generates, reused by later runs "
                          "(default: <root-dir>/data)")
    run.add_argument("--max-epochs", type=int, default=max_epochs,
                     help="train this many epochs (in all, with --resume)" + ("" if max_epochs else
                                                                               " (default: no limit)"))
    run.add_argument("--max-steps", type=int, default=max_steps,
                     help="stop after this many optimizer steps (in all, with --resume)"
                          + ("" if max_steps else " (default: no limit)"))
    run.add_argument("--limit-batches", type=int, default=None,
                     help="at most this many training and validation batches per epoch (default: all)")
    run.add_argument("--batch-size", type=int, default=batch_size, help="samples per batch, per process")
    run.add_argument("--workers", type=int, default=WORKERS, help="loader worker processes per process")
    run.add_argument("--accelerator", default="auto", help="auto, cpu, gpu (or cuda), mps")
    run.add_argument("--devices", default="auto", help="devices per node ('auto': torchrun's processes, else 1)")
    run.add_argument("--precision", default="32-true", help="32-true, 16-mixed, bf16-mixed, bf16-true")
    run.add_argument("--seed", type=int, default=0,
                     help="seeds everything first: the weights, the augmentations, the data order")
    run.add_argument("--resume", action="store_true",
                     help="continue from the newest complete checkpoint under --root-dir (fit(ckpt_path='last'))")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    # The spellings some examples had before their flags were made the same.
    run.add_argument("--epochs", type=int, dest="max_epochs", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    run.add_argument("--num-workers", type=int, dest="workers", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    run.add_argument("--output-dir", dest="root_dir", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    run.add_argument("--no-progress-bar", dest="no_progress", action="store_true", help=argparse.SUPPRESS)


def parse_first(parse_args: Callable[[Sequence[str] | None], Any]) -> None:
    """Parse the command line before the heavy imports that follow in the example: ``--help`` and a mistyped
    flag answer without importing torch. ``main`` parses again (microseconds)."""
    parse_args(sys.argv[1:])


def data_dir(args: argparse.Namespace) -> Path:
    return Path(args.data_dir) if args.data_dir else Path(args.root_dir) / "data"


def devices(args: argparse.Namespace) -> int | str:
    return int(args.devices) if str(args.devices).isdigit() else str(args.devices)


def log_every(args: argparse.Namespace, default: int) -> int:
    """The example's logging interval, no longer than an epoch cut short by ``--limit-batches`` (a longer one
    would log no step value that epoch, and the Trainer rightly warns about it)."""
    return max(1, min(default, args.limit_batches)) if args.limit_batches else default


def trainer_args(args: argparse.Namespace, log_every_n_steps: int) -> dict[str, Any]:
    """The `dltrain.Trainer` arguments the shared flags set."""
    return dict(
        max_epochs=args.max_epochs, max_steps=args.max_steps,
        accelerator=args.accelerator, devices=devices(args), precision=args.precision,
        default_root_dir=args.root_dir, seed=args.seed, enable_progress_bar=not args.no_progress,
        limit_train_batches=args.limit_batches, limit_val_batches=args.limit_batches,
        log_every_n_steps=log_every(args, log_every_n_steps),
    )
