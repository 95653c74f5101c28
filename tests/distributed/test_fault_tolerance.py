"""Replica groups that survive each other (strategy=dltrain.FaultTolerant, torchft on gloo): issue 24.

Each test launches the replica groups of ``_ft_train.py`` (one ``torchrun --max-restarts=1`` per group) against a
lighthouse started in this process, and packs its checks into that one run:

- ``test_without_failure_equals_ddp``: 2 groups of 1 process train bitwise as plain DDP on 2 processes with the
  same total batch (every step's weights, the final weights); every sample of every epoch trained once (audit).
- ``test_a_killed_group_rejoins`` (2 x 1, and 2 x 2 with ``min_replicas=2``): one group SIGKILLed at a drawn step
  (after a committed step, or inside a training_step so that the others' all-reduce fails), seed printed and
  replayable (DLTRAIN_TEST_SEED=<base> scripts/test '<test id>'). The other group never restarts (one PID) and its
  step count goes on past the kill; the killed group is restarted by its torchrun, receives the live group's
  state, and from then on both groups hold bitwise identical weights at every step; ``dltrain audit``: no sample
  trained twice, every sample of every epoch trained or listed as not trained; the final loss is that of an
  uninterrupted run within noise; the quorum changes are logged and counted in the logger.

Timing: each launch costs tens of seconds of imports on the shared 2-core machine and the restarted group more;
the lone survivor is paced (``--pace``) so that the restarted group is back before the run ends. Nothing here
measures time.
"""

from __future__ import annotations

import csv
import json
import os
import random
import re
import threading
import time
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from dltrain.audit import audit, render
from tests.distributed._ft_train import DIM, N, Regression, write_data
from tests.helpers.distributed import run_distributed
from tests.helpers.replicas import run_replica_groups

# pytest's 300 s would cut a launch short on a loaded machine before its own TIMEOUT names the group that hangs
pytestmark = [pytest.mark.distributed, pytest.mark.slow,
              pytest.mark.timeout(2 * 900 + 300)]
os.environ.setdefault("RUST_LOG", "warn")  # before torchft is imported: its in-process lighthouse logs every tick
pytest.importorskip("torchft")
SCRIPT = Path(__file__).parent / "_ft_train.py"
BATCH, STEPS, SHARD = 4, 80, 13
TIMEOUT = 900


@pytest.fixture(scope="module")
def lighthouse():
    from dltrain.lighthouse import Lighthouse

    with Lighthouse(min_replicas=1, heartbeat_timeout=2.0, join_timeout=5.0) as server:
        yield server.address


def _prepare(root: Path) -> Path:
    (root / "shards").mkdir(parents=True)
    write_data(root / "shards", SHARD)
    return root


def _trace(root: Path, group: int, rank: int = 0) -> list[dict]:
    return [json.loads(line) for line in (root / f"trace-g{group}-r{rank}.jsonl").read_text().splitlines()]


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    x = torch.randn(N, DIM, generator=g)
    return x, x[:, :4].sum(1, keepdim=True) + 0.1 * torch.randn(N, 1, generator=g)


def _loss(weights: Path | None) -> float:
    """A final model's loss over the whole training set (``None``: the loss of predicting 0)."""
    x, y = _data()
    if weights is None:
        return float((y**2).mean())
    task = Regression(None, Path("unused"), 0.0)
    task.load_state_dict(torch.load(weights, weights_only=True))
    with torch.no_grad():
        return float(F.mse_loss(task.net(x), y))


@pytest.fixture(scope="module")
def ddp_reference(tmp_path_factory):
    """Plain DDP over 2 processes (per-rank batch BATCH): what 2 groups of 1 process must equal."""
    root = _prepare(tmp_path_factory.mktemp("ddp2"))
    run_distributed(SCRIPT, ["--root", str(root), "--batch", str(BATCH), "--max-steps", str(STEPS)], nproc=2,
                    timeout=TIMEOUT)
    return root


def test_without_failure_equals_ddp(tmp_path, lighthouse, ddp_reference):
    root = _prepare(tmp_path)
    outputs = run_replica_groups(SCRIPT, ["--root", str(root), "--ft", "--batch", str(BATCH), "--max-steps",
                                          str(STEPS)], groups=2, nproc=1, lighthouse=lighthouse, timeout=TIMEOUT)
    reference = {r["step"]: r["digest"] for r in _trace(ddp_reference, 0) if r["stepped"]}
    assert len(reference) == STEPS
    for group in (0, 1):
        trace = _trace(root, group)
        assert all(r["stepped"] for r in trace), "a step was not committed in a run without failure"
        assert {r["step"]: r["digest"] for r in trace} == reference, f"group {group} differs from DDP"
        final = torch.load(root / f"final-g{group}.pt", weights_only=True)
        expected = torch.load(ddp_reference / "final-g0.pt", weights_only=True)
        assert all(torch.equal(final[k], expected[k]) for k in expected)
    report = audit(root)
    assert report.ok, render(report)
    assert all(not e.not_trained and e.duplicates == 0 for e in report.epochs), render(report)
    finished = [e for e in report.epochs if e.finished]
    assert finished and all(e.seen == e.planned for e in finished), render(report)
    assert "replica group 0: quorum of 2/2 groups" in outputs[0]


def _kill_case(seed: int, groups: int, nproc: int) -> dict:
    rng = random.Random(seed)
    return {"step": rng.randint(3, 10), "group": rng.randrange(groups), "rank": rng.randrange(nproc),
            "in": rng.choice(["after", "step"])}


@pytest.mark.parametrize(("nproc", "min_replicas"), [(1, 1), (2, 2)], ids=["2x1", "2x2"])
def test_a_killed_group_rejoins(tmp_path, lighthouse, ddp_reference, random_seed, nproc, min_replicas):
    kill = _kill_case(random_seed, 2, nproc)
    print(f"[fault tolerance] seed {random_seed}: kill {kill}")
    root = _prepare(tmp_path)
    args = ["--root", str(root), "--ft", "--batch", str(BATCH // nproc), "--max-steps", str(STEPS),
            "--min-replicas", str(min_replicas), "--kill-step", str(kill["step"]), "--kill-group",
            str(kill["group"]), "--kill-rank", str(kill["rank"]), "--kill-in", kill["in"], "--pace", "2"]
    outputs = run_replica_groups(SCRIPT, args, groups=2, nproc=nproc, lighthouse=lighthouse, timeout=TIMEOUT)
    where = f"(seed {random_seed}, kill {kill})"
    live = 1 - kill["group"]
    assert (root / "killed.marker").exists(), f"the kill did not fire {where}"
    for rank in range(nproc):
        survivor = _trace(root, live, rank)
        assert len({r["pid"] for r in survivor}) == 1, f"the live group restarted {where}"
        steps = [r["step"] for r in survivor]
        assert steps == sorted(steps) and steps[-1] == STEPS > kill["step"], f"steps {steps} {where}"
        killed = _trace(root, kill["group"], rank)
        pids = list(dict.fromkeys(r["pid"] for r in killed))
        assert len(pids) == 2, f"the killed group was not restarted once: pids {pids} {where}"
        after = [r for r in killed if r["pid"] == pids[1]]
        assert after and after[0]["healed"], f"the restarted group did not receive a live group's state {where}"
        rejoined = after[0]["step"]
        assert rejoined > kill["step"], where
        # From the rejoin on, both groups hold the same weights at every committed step.
        theirs = {r["step"]: r["digest"] for r in after if r["stepped"]}
        ours = {r["step"]: r["digest"] for r in survivor if r["stepped"] and r["step"] >= rejoined}
        assert theirs and theirs == ours, f"weights differ after the rejoin at step {rejoined} {where}"
    final = [torch.load(root / f"final-g{g}.pt", weights_only=True) for g in (0, 1)]
    assert all(torch.equal(final[0][k], final[1][k]) for k in final[0]), where
    # The audit: nothing trained twice; every sample of every epoch trained or listed as not trained.
    report = audit(root)
    text = render(report)
    assert report.ok, f"{where}\n{text}"
    assert any(e.not_trained for e in report.epochs), f"a group was down, yet nothing is listed {where}\n{text}"
    for e in report.epochs:
        assert e.duplicates == 0, text
        if e.finished:
            assert e.seen + len(e.not_trained) == e.planned, f"epoch {e.epoch}: not every sample accounted\n{text}"
    assert "not trained (steps not committed" in text
    # The same loss as an uninterrupted run with the same total batch, within noise. The noise, from this training
    # in plain PyTorch over 20 data orders: 80 steps end between 0.023 and 0.030 (from 2.44), and between 0.025 and
    # 0.036 when every step but the first 3 and last 5 trains at half batch (one group alone). The first setting
    # (40 steps, momentum 0.9) was far from converged: 0.10 to 0.75 for the same run, 0.16 to 1.7 with a lone group
    # at steps 4-15, and failed with DLTRAIN_TEST_SEED=325942 (1.31 against 0.42).
    initial = _loss(None)
    loss, reference = _loss(root / "final-g0.pt"), _loss(ddp_reference / "final-g0.pt")
    assert loss < 0.05 * initial and abs(loss - reference) < 0.02 * initial, (loss, reference, initial, where)
    # What the user sees: the quorum changes logged by the live group, the rejoin by the restarted one, the counts
    # in group 0's logger.
    # "group(s) left" only when the lighthouse dropped the killed group before it was back: a group restarted
    # within the heartbeat timeout rejoins the next quorum directly (seen with seed 1022137766).
    assert "sent the current state to a joining group" in outputs[live], where
    left = "group(s) left" in outputs[live]
    assert "rejoined: received the state of step" in outputs[kill["group"]], where
    # The live group's progress bar (on, as users run; each group draws its own) kept drawing through the
    # failure: bar updates come after the rejoin (the last epoch may end part-way, at max_steps).
    # So does the restarted group's, from its rejoin on.
    for group, marker in ((live, "sent the current state to a joining group"),
                          (kill["group"], "rejoined: received the state of step")):
        after = outputs[group].rsplit(marker, 1)[1]
        assert re.search(r"Epoch \d+(?:/\d+)?: +\d+% +\d+/\d+", after), \
            f"group {group} drew no progress bar after the failure {where}:\n{after[-2000:]}"
    # Group 0 logs. Killed before its first flush, its first launch leaves a version folder without metrics.csv
    # and the restarted launch writes its own: read every version.
    rows = [row for path in sorted(root.glob("lightning_logs/version_*/metrics.csv"))
            for row in csv.DictReader(path.open())]
    replicas = {float(row["ft/replicas"]) for row in rows if row.get("ft/replicas")}
    changes = [float(row["ft/quorum_changes"]) for row in rows if row.get("ft/quorum_changes")]
    assert 2.0 in replicas and changes, (replicas, changes, where)
    if live == 0:  # group 0 saw group 1 leave and come back
        assert max(changes) >= 1, (replicas, changes, where)
        if min_replicas == 1 and left:  # it trained alone meanwhile (with 2 it waited: no quorum of 1 group)
            assert 1.0 in replicas and max(changes) >= 2, (replicas, changes, where)


def test_every_group_killed_resumes_exactly_from_last(tmp_path, lighthouse, ddp_reference, random_seed):
    """Periodic checkpoints (group 0 writes them), kill -9 of every rank of every group at a drawn step, a new
    launch of every group from ``last``: the run ends bitwise as plain DDP did (no failure anywhere), and the audit
    over both launches counts every sample once (the steps after the checkpoint, trained by the first launch and
    redone by the second, are discarded)."""
    every = 4
    kill_step = random.Random(random_seed).choice([s for s in range(every + 1, STEPS - 4) if s % every])
    where = f"(seed {random_seed}: every group killed after step {kill_step}, checkpoints every {every})"
    print(f"[fault tolerance] {where}")
    root = _prepare(tmp_path)
    args = ["--root", str(root), "--ft", "--batch", str(BATCH), "--max-steps", str(STEPS), "--ckpt-every",
            str(every)]
    run_replica_groups(SCRIPT, [*args, "--kill-all-step", str(kill_step)], groups=2, nproc=1,
                       lighthouse=lighthouse, timeout=TIMEOUT, max_restarts=0, check=False)
    killed = {g: _trace(root, g) for g in (0, 1)}
    for g in (0, 1):
        assert killed[g][-1]["step"] == kill_step and not (root / f"final-g{g}.pt").exists(), where
    ckpts = sorted(p.name for p in (root / "checkpoints").iterdir())
    assert "last.ckpt" in ckpts and not any(".tmp" in name for name in ckpts), (ckpts, where)
    outputs = run_replica_groups(SCRIPT, [*args, "--resume"], groups=2, nproc=1, lighthouse=lighthouse,
                                 timeout=TIMEOUT)
    resumed_at = (kill_step // every) * every
    assert f"restored from {root / 'checkpoints' / 'last.ckpt'}" in outputs[0], (outputs[0][-3000:], where)
    reference = {r["step"]: r["digest"] for r in _trace(ddp_reference, 0) if r["stepped"]}
    for g in (0, 1):
        trace = _trace(root, g)
        pids = list(dict.fromkeys(r["pid"] for r in trace))
        assert len(pids) == 2, (pids, where)
        second = [r for r in trace if r["pid"] == pids[1]]
        assert second[0]["step"] == resumed_at + 1 and not second[0]["healed"], (second[0], where)
        assert all(r["stepped"] for r in second), where
        assert {r["step"]: r["digest"] for r in second} == {s: d for s, d in reference.items() if s > resumed_at}, \
            f"group {g} after the resume differs from DDP {where}"
        final = torch.load(root / f"final-g{g}.pt", weights_only=True)
        expected = torch.load(ddp_reference / "final-g0.pt", weights_only=True)
        assert all(torch.equal(final[k], expected[k]) for k in expected), where
    report = audit(root)
    text = render(report)
    assert report.ok, f"{where}\n{text}"
    assert sum(r.batches_discarded for r in report.rounds) == 2 * (kill_step - resumed_at), f"{where}\n{text}"
    for e in report.epochs:
        assert e.duplicates == 0 and not e.not_trained, f"{where}\n{text}"
        if e.finished:
            assert e.seen == e.planned, f"{where}\n{text}"


def test_a_lost_lighthouse_stops_every_group_with_a_clear_error(tmp_path):
    """The lighthouse is a single point of failure (the guide says so): stopped while 2 groups train, every group
    fails within its quorum timeout with an error that names the lighthouse and what to do, instead of hanging."""
    from dltrain.lighthouse import Lighthouse

    root = _prepare(tmp_path)
    server = Lighthouse(min_replicas=1, heartbeat_timeout=2.0, join_timeout=5.0)
    args = ["--root", str(root), "--ft", "--batch", str(BATCH), "--max-steps", "100000", "--quorum-timeout", "20"]
    result: dict[str, object] = {}

    def launch() -> None:
        try:
            result["outputs"] = run_replica_groups(SCRIPT, args, groups=2, nproc=1, lighthouse=server.address,
                                                   timeout=TIMEOUT, max_restarts=0, check=False)
        except BaseException as exn:  # reported below, on the test's thread
            result["error"] = exn

    runner = threading.Thread(target=launch)
    runner.start()
    try:
        deadline = time.monotonic() + TIMEOUT
        while not all((root / f"trace-g{g}-r0.jsonl").exists() and len(_trace(root, g)) >= 3 for g in (0, 1)):
            assert runner.is_alive() and time.monotonic() < deadline, result
            time.sleep(0.2)
    finally:
        server.shutdown()
    runner.join(TIMEOUT + 60)
    assert "error" not in result, result.get("error")
    outputs = result["outputs"]
    assert isinstance(outputs, list)
    for g in (0, 1):
        steps = [r["step"] for r in _trace(root, g)]
        assert steps[-1] < 100000 and not (root / f"final-g{g}.pt").exists(), f"group {g} finished: {steps[-5:]}"
        assert f"replica group {g} (rank 0) at step" in outputs[g] and "no quorum from the lighthouse" in outputs[g] \
            and "Is the lighthouse running (dltrain lighthouse)" in outputs[g], outputs[g][-4000:]
