"""tests/helpers/forklaunch.py: a forked rank sees what a torchrun worker sees, and a failing rank stops the launch
as torchrun's agent stops it. One torchrun launch and a few forked ones, compared."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.helpers.distributed import run_distributed

pytestmark = pytest.mark.distributed

PROBE = """
import atexit, json, os, random, sys
import lightning.fabric  # noqa: F401  (sets lightning_utilities' rank_zero_only.rank at import)
import lightning_utilities.core.rank_zero as rz
import numpy as np
from torchmetrics.utilities.prints import rank_zero_only as metrics_rank_zero
keys = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE", "ROLE_RANK",
        "ROLE_NAME", "ROLE_WORLD_SIZE", "MASTER_ADDR", "TORCHELASTIC_RESTART_COUNT", "TORCHELASTIC_MAX_RESTARTS",
        "TORCHELASTIC_USE_AGENT_STORE", "OMP_NUM_THREADS")
import torch.distributed as dist
dist.init_process_group("gloo")
report = {"env": {k: os.environ.get(k) for k in keys}, "run_id": bool(os.environ.get("TORCHELASTIC_RUN_ID")),
          "argv": sys.argv[1:], "cwd": os.getcwd(), "main": __name__, "path0": sys.path[0],
          "hash": hash("dltrain"), "random": random.random(), "numpy": float(np.random.random()),
          "rank_zero": [rz.rank_zero_only.rank, metrics_rank_zero.rank], "session_leader": os.getsid(0) == os.getpid()}
every = [None] * dist.get_world_size()
dist.all_gather_object(every, report)
rank = dist.get_rank()
dist.destroy_process_group()
atexit.register(lambda: print("ATEXIT", os.environ["RANK"], flush=True))
if rank == 0:  # a file: lines the ranks print at the same time may interleave
    with open(sys.argv[1], "w") as f:
        json.dump(every, f)
"""

FAIL = """
import os, signal, sys, time
if os.environ["RANK"] == "1":
    time.sleep(1)
    sys.exit(3)
signal.signal(signal.SIGTERM, lambda *a: (print("rank 0 got SIGTERM", flush=True), sys.exit(143)))
time.sleep(120)
"""




def test_a_forked_rank_sees_what_a_torchrun_worker_sees(tmp_path: Path) -> None:
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    real = run_distributed(script, [str(tmp_path / "torchrun.json"), "b"], nproc=3, launcher="torchrun", timeout=180)
    forked = run_distributed(script, [str(tmp_path / "fork.json"), "b"], nproc=3, timeout=180)
    torchrun, fork = (json.loads((tmp_path / f"{name}.json").read_text()) for name in ("torchrun", "fork"))
    drop = ("hash", "random", "numpy", "argv")  # per process: compared below, not with torchrun's values
    assert [{k: v for k, v in r.items() if k not in drop} for r in fork] == \
        [{k: v for k, v in r.items() if k not in drop} for r in torchrun]
    assert [r["argv"][1:] for r in fork] == [r["argv"][1:] for r in torchrun] == [["b"]] * 3
    for reports in (torchrun, fork):
        assert [r["rank_zero"] for r in reports] == [[0, 0], [1, 1], [2, 2]]
        for key in drop[:3]:  # every rank its own hash seed and generators, as separate interpreters have
            assert len({r[key] for r in reports}) == 3, (key, reports)
    for output in (real.stdout, forked.stdout):
        assert sorted(re.findall(r"^ATEXIT (\d)$", output, re.M)) == ["0", "1", "2"]


def test_a_failing_rank_stops_the_others_as_torchrun_does(tmp_path: Path) -> None:
    script = tmp_path / "fail.py"
    script.write_text(FAIL)
    for launcher in ("torchrun", "auto"):
        done = run_distributed(script, nproc=2, launcher=launcher, check=False, timeout=100)
        assert done.returncode == 1, (launcher, done.stdout[-3000:])
        assert "rank 0 got SIGTERM" in done.stdout, (launcher, done.stdout[-3000:])
