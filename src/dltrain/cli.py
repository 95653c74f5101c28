"""The ``dltrain`` command line.

Example:
    $ dltrain shards index "data/train-{000000..000127}.tar"
    wrote data/train.index.json: 128 shards, 160000 samples, with sample offsets
    $ dltrain ckpt consolidate runs/exp1/checkpoints/last.ckpt model.ckpt   # a sharded (fsdp2) checkpoint as one file
    $ dltrain audit runs/exp1                    # what the run trained on (needs callbacks=[SampleLedger()])
    $ dltrain lighthouse --min-replicas 1        # the quorum server of a FaultTolerant job (needs dltrain[ft])
    $ dltrain fit --config config.yaml          # LightningCLI's subcommands, through dltrain.CLI
    $ dltrain fit --model mymodule.MyTask --data mymodule.MyData --trainer.max_epochs 3
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["main"]  # and, on first use, the config CLI's names below

# ``from lightning.pytorch.cli import LightningCLI`` renamed is ``from dltrain.cli import CLI``: the config CLI's
# names, imported on first use (they need the Trainer and jsonargparse; the ``dltrain`` command needs neither).
_CONFIG_CLI_NAMES = {"CLI", "LightningCLI", "SaveConfigCallback", "dltrain_class_path", "LightningArgumentParser"}


def __getattr__(name: str) -> object:
    if name in _CONFIG_CLI_NAMES:
        from dltrain import _config_cli

        if name == "LightningArgumentParser":
            return _config_cli.argument_parser_class()
        return getattr(_config_cli, "CLI" if name == "LightningCLI" else name)
    raise AttributeError(f"module 'dltrain.cli' has no attribute {name!r}")


def _shards_index(args: argparse.Namespace) -> int:
    from dltrain.data.shards import build_index, default_index_path, expand_urls

    urls = expand_urls(args.urls)
    path = args.output or default_index_path(urls)
    index = build_index(urls, path=path)
    # Offsets let local shards be read by seeking (dltrain.data.shards); say when some shards have none.
    seek = sum("offsets" in s for s in index["shards"])
    what = "with sample offsets" if seek == len(index["shards"]) else f"sample offsets for {seek} (local, uncompressed)"
    print(f"wrote {path}: {len(index['shards'])} shards, {index['total']} samples, {what}")
    return 0


def _audit(args: argparse.Namespace) -> int:
    import json

    from dltrain.audit import audit, render

    try:
        report = audit(args.run_dir)
    except FileNotFoundError as exn:
        print(f"dltrain audit: {exn}", file=sys.stderr)
        return 2
    print(json.dumps(report.to_json(), indent=1) if args.json else render(report))
    return 0 if report.ok else 1


def _ckpt_consolidate(args: argparse.Namespace) -> int:
    from dltrain.checkpoint import consolidate, load

    out = consolidate(args.directory, args.output)
    checkpoint = load(out)
    print(f"wrote {out}: {len(checkpoint['state_dict'])} tensors, {len(checkpoint.get('optimizer_states', []))} "
          f"optimizer state(s), global step {checkpoint['loops']['global_step']}, written by "
          f"{checkpoint['world_size']} rank(s)")
    return 0


def _lighthouse(args: argparse.Namespace) -> int:
    import signal
    import threading

    from dltrain.lighthouse import Lighthouse

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with Lighthouse(args.min_replicas, port=args.port, host=args.host, join_timeout=args.join_timeout,
                    heartbeat_timeout=args.heartbeat_timeout) as lighthouse:
        print(f"[dltrain] lighthouse at {lighthouse.address} (min {args.min_replicas} replica groups); "
              f"export TORCHFT_LIGHTHOUSE={lighthouse.address}", flush=True)
        while not stop.wait(1.0):
            pass
    print("[dltrain] lighthouse stopped", flush=True)
    return 0


_RUN_COMMANDS = ("fit", "validate", "test", "predict")


def _run(argv: list[str]) -> int:
    """``dltrain fit|validate|test|predict ...``.

    Dltrain.CLI with the task and data chosen by class path (``--model``, ``--data``, or in ``--config``), as
    ``lightning fit ...`` does; modules in the current folder import, as with ``python -m``.
    """
    import os

    from dltrain import CLI

    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    CLI(args=argv)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dltrain", description="dltrain command line tools; also: dltrain {fit,validate,test,predict} --help "
        "(a config CLI like LightningCLI, needs dltrain[cli])")
    sub = parser.add_subparsers(dest="command", required=True)
    shards = sub.add_parser("shards", help="work with tar shards")
    shards_sub = shards.add_subparsers(dest="shards_command", required=True)
    index = shards_sub.add_parser(
        "index",
        help="write the index of existing shards: sample counts and byte offsets (reads tar headers only)",
        description="Write <stem>.index.json next to the shards (see dltrain.data.shards).",
    )
    index.add_argument("urls", nargs="+", help="shard paths/URLs or brace patterns ('d/train-{000000..000127}.tar')")
    index.add_argument("-o", "--output", default=None, help="index path (default: next to the first shard)")
    index.set_defaults(func=_shards_index)
    audit = sub.add_parser(
        "audit",
        help="what a run trained on, per epoch: duplicates and missing samples, from its SampleLedger",
        description="Read the sample ledgers of a run (every restart and world size included), keep what its "
        "checkpoint chain committed, and report per epoch: samples seen, trained twice, never trained on. "
        "Exit status 1 on any problem, 2 when there is no ledger.",
    )
    audit.add_argument("run_dir", help="the run's default_root_dir, or its ledger folder")
    audit.add_argument("--json", action="store_true", help="print the report as JSON")
    audit.set_defaults(func=_audit)
    lighthouse = sub.add_parser(
        "lighthouse",
        help="the quorum server of a fault-tolerant job (dltrain.FaultTolerant; needs dltrain[ft])",
        description="Run torchft's lighthouse until SIGINT/SIGTERM. Give every replica group its address in "
        "TORCHFT_LIGHTHOUSE. It is a single point of failure: if it stops, the groups wait for it.",
    )
    lighthouse.add_argument("--min-replicas", type=int, required=True,
                            help="the fewest replica groups a quorum needs (a majority of the job's groups)")
    lighthouse.add_argument("--port", type=int, default=29510, help="port to listen on (0: any; default 29510)")
    lighthouse.add_argument("--host", default="::", help="interface to listen on (default: every interface)")
    lighthouse.add_argument("--join-timeout", type=float, default=60.0,
                            help="seconds a new quorum waits for live groups that have not joined yet (default 60)")
    lighthouse.add_argument("--heartbeat-timeout", type=float, default=5.0,
                            help="seconds without a heartbeat before a group counts as dead (default 5)")
    lighthouse.set_defaults(func=_lighthouse)
    ckpt = sub.add_parser("ckpt", help="work with checkpoints")
    ckpt_sub = ckpt.add_subparsers(dest="ckpt_command", required=True)
    consolidate = ckpt_sub.add_parser(
        "consolidate",
        help="write a sharded checkpoint directory (strategy='fsdp2') as one full .ckpt file",
        description="Read every rank's shards in this one process (no GPU, no process group) and write the whole "
        "model and optimizer states with the rest of the checkpoint: Task.load_from_checkpoint and "
        "trainer.test(ckpt_path=...) read it under any strategy.",
    )
    consolidate.add_argument("directory", help="the sharded checkpoint (a directory, or last.ckpt linking to one)")
    consolidate.add_argument("output", help="the .ckpt file to write")
    consolidate.set_defaults(func=_ckpt_consolidate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (errors from bad data print a message and return 1)."""
    from dltrain.errors import DltrainError

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in _RUN_COMMANDS:
        return _run(argv)
    args = _parser().parse_args(argv)
    try:
        return int(args.func(args))
    except DltrainError as exn:
        print(f"dltrain: error: {exn}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
