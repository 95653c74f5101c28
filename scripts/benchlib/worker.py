"""The worker process (``--serve``): builds a case's runner once, then executes runs sent by the parent."""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

from benchlib.common import _PERF, _maxrss_mb, _threads
from benchlib.datacase import DataRunner
from benchlib.runners import CudaRunner, LoopRunner, PluginRunner, ResumeRunner


def _make_runner(spec: dict[str, Any]) -> Any:
    case, variant, cfg, tmp = spec["case"], spec["variant"], spec["cfg"], spec["tmp"]
    if case in ("loop", "cnn"):
        return LoopRunner(variant, "mlp" if case == "loop" else "cnn", cfg, tmp)
    if case == "data" or case.startswith("data-"):  # data-raw, data-jpeg: case 3's other regimes
        if variant in ("litdata", "mosaic"):
            from benchlib.peers import PeerDataRunner

            return PeerDataRunner(variant, cfg, spec["urls"], tmp)
        return DataRunner(variant, cfg, spec["urls"])
    if case == "resume":
        return ResumeRunner(variant, cfg, spec.get("urls", []), tmp)
    if case == "resume-loader":
        from benchlib.peers import PeerResumeRunner

        return PeerResumeRunner(variant, cfg, spec["urls"], tmp)
    if case == "plugins":
        return PluginRunner(variant, cfg)
    if case == "ledger":
        from benchlib.ledger import LedgerRunner

        return LedgerRunner(variant, cfg, spec.get("urls", []), tmp)
    if case in ("resnet", "gpt"):
        return CudaRunner(variant, case, cfg, tmp)
    raise ValueError(case)


def serve() -> None:
    """Worker: read one JSON command per line on stdin, answer one JSON line on the private pipe."""
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything printed by the libraries goes to the worker's log, not into the protocol
    sys.stdout = sys.stderr
    t_start = time.time()
    _threads()
    runners: dict[str, Any] = {}
    proto.write(json.dumps({"ready": True, "pid": os.getpid(), "import_s": time.time() - t_start}) + "\n")
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd.get("quit"):
            break
        key = f"{cmd['case']}/{cmd['variant']}"
        try:
            if key not in runners:
                t = _PERF()
                runners[key] = _make_runner(cmd)
                setup_s = _PERF() - t
            else:
                setup_s = 0.0
            t = _PERF()
            out = runners[key].run(int(cmd.get("rep", 0)), cmd.get("args", {}))
            out["run_wall_s"] = _PERF() - t
            out["setup_s"] = setup_s
            out["ended_at"] = time.time()
        except Exception as err:
            import traceback

            out = {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc(limit=8)}
        out["rss_mb"] = out.get("rss_mb", _maxrss_mb())
        proto.write(json.dumps(out) + "\n")
    proto.close()
