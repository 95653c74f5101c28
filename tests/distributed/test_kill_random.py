"""Randomized SIGKILL/resume: every run draws its configuration and 1-3 kill points from its own seed.

A run is a chain of launches of ``_train.py`` with the same arguments (every kill point of the run, plus
``--resume``): each kill point has its own marker file, so a launch ends at the next kill point that has not fired
yet, and the launch after it resumes from "last". The chain ends with a launch that finishes; its ``final.pt`` must
be bitwise equal to that of the uninterrupted run of the same configuration, its effective sample keys per rank
(per step, the entry written last) equal to the reference's, and every epoch must train on every sample exactly
once over all ranks; the final ``last.ckpt`` must load and hold the last step, and no temporary of a killed save
may be left in the checkpoint folder.

Strategies: "ddp" (one checkpoint file, written by rank zero) and "fsdp2" (``Trainer(strategy="fsdp2")``, 1 or 2
ranks on gloo: a checkpoint is a directory of every rank's DCP shards and rank zero's ``meta.pt``, renamed into place
by rank zero, ``last.ckpt`` a symbolic link re-pointed after that). ``final.pt`` holds the weights gathered whole,
and an fsdp2 run is compared with the uninterrupted fsdp2 run of its configuration (same world size), never with DDP.
Every kill point applies to both. World size 3 is not drawn (for either): the checks assume 7 steps of 8 samples
per epoch, and a global batch of 8 does not split over 3 ranks; test_fsdp2.py resumes an fsdp2 checkpoint on 3.
When the fsdp2 dimension was added, sessions with base seeds 46900 (41 launches, 354 s) and 651100 (clock-drawn,
42 launches, 435 s) passed 24 of 24 runs, 11 of them fsdp2, whose kills fired at every kind of kill point and at
every phase of a sharded save (the write phase on rank 0 and on rank 1).

Weight averaging: half the configurations train with ``EMAWeightAveraging(decay=0.8)`` (``--ema``): every
checkpoint holds the average (gathered whole under fsdp2), validation runs on the averaged weights and ``final.pt``
is the averaged weights that training ends with, so a resume must restore the average exactly too.

Asynchronous saves: half the configurations of a pool draw ``ModelCheckpoint(async_save=True)`` (the state copied
off the device, written by a background thread while training goes on; DCP's ``async_save`` under fsdp2), so that a
kill lands while a checkpoint is being written in the background: the kill "in the middle of writing" fires on the
writer thread (ddp; fsdp2's publish and link phases), a step or timer kill may find the newest save not yet
complete, and the resumed run must still end bitwise equal.

Kill points: after a random optimizer step (on a random rank; before that step's own checkpoint, which the Trainer
writes after the other callbacks); two steps of the same epoch, so that the epoch is resumed twice; in ``on_train_epoch_end`` right after the epoch-end checkpoint; in the middle of writing a
checkpoint (ddp: rank zero with half the file on disk; fsdp2: at a drawn phase of the sharded save, see
``kill_during_sharded_save`` in _train.py: a drawn rank with part of a shard file written, rank zero after every
shard is on disk and before the rename, or rank zero after the rename with the new ``last.ckpt`` link made under its
temporary name but not renamed over the old one); after a random wall-clock delay from the start of fit (the 14
steps take ~0.05-0.3 s, so the delays are short; nothing happens if the launch finishes first).

Seeds: run ``i`` uses seed ``BASE_SEED + i``, where ``BASE_SEED`` (a multiple of 100) is derived from the suite's
``DLTRAIN_TEST_SEED`` (drawn unless set, tests/helpers/seeds.py) and printed with ``-s``; ``DLTRAIN_KILL_RUNS``
changes the number of runs (12). ``DLTRAIN_TEST_SEED=<base> scripts/test '<file>::<test>[run03]' -s`` replays run 3
alone (configuration, kill points; a wall-clock kill lands where the clock says): only the selected runs are
launched. Every failure message names the run's seed, its configuration, what each launch did and the command
that replays it.

Budget: a launch costs 3-10 s (its ranks are forked from rank servers that imported torch and friends once,
tests/helpers/forklaunch.py, with torchrun's failure handling: a killed rank's peers get SIGTERM); the file makes about
45 of them. The runs are executed by DLTRAIN_KILL_JOBS (2) threads started with the session, each test waiting
for its own run, and the configurations come from a pool of 6 per base seed (see ``config_pool``), so that the
uninterrupted references, computed once per configuration, are shared by several runs.
"""

from __future__ import annotations

import itertools
import json
import os
import random
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from dltrain import checkpoint as ckpt_io
from dltrain.audit import audit, render
from dltrain.errors import CheckpointError
from tests.distributed._train import SHARDED_SAVE_PHASES
from tests.distributed.test_resume import effective_keys
from tests.helpers.distributed import run_distributed
from tests.helpers.seeds import base_seed, replay_command, seed_for

pytestmark = [pytest.mark.distributed, pytest.mark.slow]
TRAIN = Path(__file__).parent / "_train.py"

N, BATCH, EPOCHS, EVERY = 56, 8, 2, 2  # 7 steps per epoch: the epoch end is a checkpoint of its own
STEPS_PER_EPOCH = N // BATCH
TOTAL_STEPS = STEPS_PER_EPOCH * EPOCHS
SHARD_SIZES = (5, 13, 24)  # 56 samples: 11 shards of 5 and one of 1; 4 of 13 and one of 4; 24, 24, 8
LAUNCH_TIMEOUT = 180

# Configurations come from a pool of POOL_SIZE, drawn from seed // POOL_SPAN: the runs of a session (consecutive
# seeds from a base that is a multiple of POOL_SPAN) share at most POOL_SIZE uninterrupted references, which is
# what keeps the file within its time budget; the pool changes with the base seed.
POOL_SPAN, POOL_SIZE = 100, 6
BASE_SEED = seed_for(__name__) // POOL_SPAN * POOL_SPAN
RUNS = int(os.environ.get("DLTRAIN_KILL_RUNS", "12"))
SEEDS = [BASE_SEED + i for i in range(RUNS)]
JOBS = int(os.environ.get("DLTRAIN_KILL_JOBS", "2"))


@dataclass(frozen=True)
class Config:
    world: int
    workers: int
    data: str
    scheduler: str
    shard_size: int | None  # stream data only
    strategy: str = "ddp"  # ddp | fsdp2 (sharded checkpoint directories)
    ema: bool = False  # EMAWeightAveraging: its average is in every checkpoint; final.pt is the averaged weights
    async_save: bool = False  # ModelCheckpoint(async_save=True): written in the background while training goes on

    def args(self) -> list[str]:
        # "--samples" is _train.py's "--n": torchrun would take a bare "--n" for one of its own options.
        args = ["--samples", str(N), "--batch-size", str(BATCH), "--epochs", str(EPOCHS), "--every", str(EVERY),
                "--workers", str(self.workers), "--data", self.data, "--scheduler", self.scheduler,
                "--dropout", "0.2"]
        if self.shard_size is not None:
            args += ["--shard-size", str(self.shard_size), "--ledger"]  # stream data: a SampleLedger too
        if self.strategy == "fsdp2":
            args += ["--strategy", "fsdp2"]
        if self.ema:
            args += ["--ema"]
        if self.async_save:
            args += ["--async-save"]
        return args


@dataclass(frozen=True)
class Kill:
    kind: str  # step | epoch | save | timer
    args: tuple[str, ...]
    marker: str
    always_fires: bool  # False: a timer (or a save count) that the run may finish before

    def __str__(self) -> str:
        return f"{self.kind}({' '.join(self.args)})"


@dataclass
class Plan:
    seed: int
    config: Config
    kills: list[Kill] = field(default_factory=list)

    def kill_args(self) -> list[str]:
        """The options of every kill point; the step kills go together in one "--kill-steps"."""
        steps = [k.args[1] for k in self.kills if k.kind == "step"]
        others = [a for k in self.kills if k.kind != "step" for a in k.args]
        return [*(["--kill-steps", ",".join(steps)] if steps else []), *others]

    def describe(self) -> str:
        c = self.config
        shards = f" shard_size={c.shard_size}" if c.shard_size else ""
        return (f"seed={self.seed} [strategy={c.strategy} world={c.world} workers={c.workers} data={c.data}{shards} "
                f"scheduler={c.scheduler} ema={c.ema} async_save={c.async_save}] kills: "
                f"{', '.join(map(str, self.kills))}")


def _ckpt_before(step: int) -> int:
    """The step of the checkpoint that a kill after optimizer step ``step`` resumes from: the newest one before
    ``step`` (checkpoints every EVERY steps and at every epoch end; the Trainer runs checkpoint callbacks after the
    others, so the kill comes before a checkpoint of ``step`` itself); 0: none."""
    return max(s for s in range(step) if s % EVERY == 0 or s % STEPS_PER_EPOCH == 0)


def config_pool(pool_seed: int) -> list[Config]:
    """POOL_SIZE configurations in which every value of every dimension comes up equally often."""
    rng = random.Random(f"pool-{pool_seed}")

    def column(values: list) -> list:
        col = values * (POOL_SIZE // len(values))
        rng.shuffle(col)
        return col

    worlds, workers, datas, schedulers = column([1, 2]), column([0, 2]), column(["map", "stream"]), column(
        ["step", "epoch"])
    strategies = column(["ddp", "fsdp2"])
    emas = column([False, True])
    asyncs = column([False, True])
    return [Config(world=worlds[i], workers=workers[i], data=datas[i], scheduler=schedulers[i],
                   shard_size=rng.choice(SHARD_SIZES) if datas[i] == "stream" else None, strategy=strategies[i],
                   ema=emas[i], async_save=asyncs[i])
            for i in range(POOL_SIZE)]


def draw(seed: int) -> Plan:
    rng = random.Random(seed)
    config = rng.choice(config_pool(seed // POOL_SPAN))
    world = config.world
    plan = Plan(seed, config)
    n_kills = rng.randint(1, 3)
    used_kinds: set[str] = set()
    steps: set[int] = set()

    def step_kill(step: int) -> Kill:
        steps.add(step)
        return Kill("step", ("--kill-steps", f"{step}:{rng.randrange(world)}"), f"killed-step{step}.marker", True)

    while len(plan.kills) < n_kills:
        kind = rng.choice(["step", "pair", "pair", "epoch", "save", "timer"])
        if kind == "step":
            free = [s for s in range(1, TOTAL_STEPS + 1) if s not in steps]
            plan.kills.append(step_kill(rng.choice(free)))
        elif kind == "pair":
            # Two kills in one epoch, each resumed from a checkpoint of that epoch, the second one from a
            # checkpoint written after the first resume, with batches left to train after it.
            if n_kills - len(plan.kills) < 2:
                continue
            e = rng.randrange(EPOCHS)
            first, last = e * STEPS_PER_EPOCH, (e + 1) * STEPS_PER_EPOCH
            pairs = [(a, b) for a in range(first + 1, last + 1) for b in range(a + 1, last + 1)
                     if first < _ckpt_before(a) < _ckpt_before(b) < last and not {a, b} & steps]
            if not pairs:
                continue
            a, b = rng.choice(pairs)
            plan.kills += [step_kill(a), step_kill(b)]
        elif kind in used_kinds:
            continue  # one of each of the others: _train.py has one option for each
        elif kind == "epoch":
            epoch = 0 if rng.random() < 0.75 else rng.randrange(EPOCHS)  # mostly one with an epoch after it
            plan.kills.append(Kill("epoch", ("--kill-epoch-end", str(epoch), "--kill-epoch-end-rank",
                                             str(rng.randrange(world))), "killed-epoch.marker", True))
        elif kind == "save":
            where: tuple[str, ...] = ()
            if config.strategy == "fsdp2":  # where in the sharded save: a rank's shards, the rename, the link
                phase = rng.choice(SHARDED_SAVE_PHASES)
                where = ("--kill-in-save-phase", phase, "--kill-in-save-rank",
                         str(rng.randrange(world) if phase == "write" else 0))
            plan.kills.append(Kill("save", ("--kill-in-save", str(rng.randint(1, 3)), *where),
                                   "killed-in-save.marker", False))
        else:
            plan.kills.append(Kill("timer", ("--kill-after", f"{rng.uniform(0.005, 0.15):.3f}", "--kill-after-rank",
                                             str(rng.randrange(world))), "killed-timer.marker", False))
        used_kinds.add(kind)
    return plan


def _run_id(index: int) -> str:
    return f"run{index:02d}"


def replay_hint(seed: int) -> str:
    test = f"tests/distributed/test_kill_random.py::test_random_kills_then_resume_is_bitwise_exact[{_run_id(seed - BASE_SEED)}]"
    return f"replay: {replay_command(test)} -s"


def compare(ref: Path, out: Path, world: int, launches: int, early_kills: int = 0) -> list[str]:
    """What differs between the resumed run ``out`` and the uninterrupted ``ref``: weights, samples per step and
    rank, samples per epoch (every one exactly once over all ranks)."""
    problems = []
    a, b = torch.load(ref / "final.pt"), torch.load(out / "final.pt")
    differ = sorted(name for name in a.keys() | b.keys() if name not in a or name not in b
                    or not torch.equal(a[name], b[name]))
    if differ:
        problems.append(f"final.pt is not bitwise equal to the uninterrupted run's: {differ}")
    per_epoch: dict[int, list[int]] = {e: [] for e in range(EPOCHS)}
    for rank in range(world):
        mine, theirs = effective_keys(out, rank), effective_keys(ref, rank)
        if mine != theirs:
            bad = next((i for i, (m, t) in enumerate(zip(mine, theirs)) if m != t), min(len(mine), len(theirs)))
            got, want = (mine[bad] if bad < len(mine) else None), (theirs[bad] if bad < len(theirs) else None)
            problems.append(f"rank {rank}: effective sample keys differ from the reference's ({len(mine)} steps, "
                            f"reference {len(theirs)}); first at (step, keys) {got}, reference {want}")
        last: dict[int, dict] = {}
        for line in (out / f"keys-rank{rank}.jsonl").read_text().splitlines():
            entry = json.loads(line)
            last[entry["step"]] = entry  # as effective_keys: a re-trained step overwrites the killed run's entry
        for entry in last.values():
            per_epoch.setdefault(entry["epoch"], []).extend(entry["keys"])
    for epoch, keys in sorted(per_epoch.items()):
        if sorted(keys) != list(range(N)):
            repeated = sorted({k for k in keys if keys.count(k) > 1})
            problems.append(f"epoch {epoch}: not every sample exactly once: missing "
                            f"{sorted(set(range(N)) - set(keys))}, repeated {repeated}")
    if (out / "ledger").is_dir():
        problems += check_ledger(out, per_epoch, launches, early_kills)
    return problems


def check_folder(folder: Path) -> list[str]:
    """After the launch that finished: ``last.ckpt`` loads and holds the end of training, and no temporary of a
    killed save (file, sharded directory, link) is left in the folder."""
    problems = []
    last = folder / "last.ckpt"
    try:
        step = ckpt_io.load(last)["loops"]["global_step"]
    except CheckpointError as err:
        problems.append(f"the final last.ckpt does not load: {err}")
    else:
        if step != TOTAL_STEPS:
            problems.append(f"the final last.ckpt ({os.path.realpath(last)}) is at step {step}, not {TOTAL_STEPS}")
    left = sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name)
    if left:
        problems.append(f"temporaries of killed saves left in {folder}: {left}")
    return problems


def check_ledger(out: Path, per_epoch: dict[int, list[int]], launches: int, early_kills: int) -> list[str]:
    """`dltrain audit` of the run's SampleLedger: no problem, one round per launch, every epoch finished, and per
    epoch every sample seen once, as the task's own record of its batches says (compare() checks that)."""
    report = audit(out)
    problems = [f"dltrain audit: {p}" for p in report.problems]
    # A launch opens its round's files in on_train_start (a wall-clock kill may come before that). Lines are
    # buffered and flushed when a checkpoint is saved, so a launch killed before its first checkpoint leaves empty
    # files (nothing committed); every other round is one of the audit's.
    files: dict[str, list[Path]] = {}
    for f in (out / "ledger").glob("round-*-rank*.jsonl"):
        files.setdefault(f.name.split("-")[1], []).append(f)
    written = [r for r, fs in files.items() if any(f.stat().st_size for f in fs)]
    if not launches - early_kills <= len(files) <= launches:
        problems.append(f"{len(files)} ledger rounds for {launches} launches ({early_kills} killed by the clock, "
                        f"maybe before their ledger started)")
    if len(report.rounds) != len(written):
        problems.append(f"dltrain audit found {len(report.rounds)} rounds, the ledger folder has {len(written)} "
                        f"with lines ({len(files) - len(written)} empty: killed before their first checkpoint)")
    for e in report.epochs:
        if not e.finished or e.seen != N or e.planned != N:
            problems.append(f"dltrain audit, epoch {e.epoch}: finished={e.finished}, seen {e.seen} of {N}, planned "
                            f"{e.planned}")
    if [e.epoch for e in report.epochs] != sorted(per_epoch):
        problems.append(f"dltrain audit epochs {[e.epoch for e in report.epochs]}, task epochs {sorted(per_epoch)}")
    if problems:
        problems.append("audit report:\n" + render(report))
    return problems


class Runner:
    """Executes the runs in a few threads; the references are computed once per configuration."""

    def __init__(self, basetemp: Path, seeds: list[int], jobs: int) -> None:
        self.basetemp = basetemp
        self.stopped = False
        self.pool = ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix="kill-run")
        # A reference is a task of its own, queued before the first run that needs it: it runs alongside that
        # run's killed launches, and is done (or running) when a run waits for it.
        self._refs: dict[Config, Future[Path]] = {}
        self.futures: dict[int, Future[str]] = {}
        for seed in seeds:
            plan = draw(seed)
            if plan.config not in self._refs:
                self._refs[plan.config] = self.pool.submit(self._reference, plan.config)
            out = basetemp / f"run-{seed}"
            out.mkdir(parents=True)
            self.futures[seed] = self.pool.submit(self.run, plan, out)

    def close(self) -> None:
        self.stopped = True
        self.pool.shutdown(wait=True, cancel_futures=True)

    def launch(self, args: list[str], world: int):
        if self.stopped:
            raise RuntimeError("the session is over")
        return run_distributed(TRAIN, args, nproc=world, timeout=LAUNCH_TIMEOUT, check=False)

    def _reference(self, c: Config) -> Path:
        out = self.basetemp / (f"ref-{c.strategy}-w{c.world}-j{c.workers}-{c.data}{c.shard_size or ''}-{c.scheduler}"
                               f"{'-ema' if c.ema else ''}{'-async' if c.async_save else ''}")
        done = self.launch(["--out", str(out), *c.args()], c.world)
        if done.returncode != 0:
            raise AssertionError(f"the uninterrupted run {out.name} failed:\n{done.stdout[-6000:]}")
        return out

    def run(self, plan: Plan, out: Path) -> str:
        """Kill, resume, ..., finish; compare with the reference. Returns what happened (for the -s output)."""
        c = plan.config
        args = ["--out", str(out), *c.args(), *plan.kill_args(), "--resume"]
        history: list[str] = []

        def fail(what: str, output: str = "") -> AssertionError:
            tail = f"\n--- output of the last launch ---\n{output[-6000:]}" if output else ""
            return AssertionError(f"{plan.describe()}\n  launches: {'; '.join(history) or '-'}\n  {what}\n  "
                                  f"{replay_hint(plan.seed)}{tail}")

        fired: set[str] = set()
        for launch in range(len(plan.kills) + 1):
            done = self.launch(args, c.world)
            new = {k.marker for k in plan.kills if (out / k.marker).exists()} - fired
            fired |= new
            if not new:
                history.append(f"#{launch} finished (rc {done.returncode})")
                if done.returncode != 0:
                    raise fail(f"launch #{launch} failed without being killed (rc {done.returncode})", done.stdout)
                break
            killed_by = [str(k) for k in plan.kills if k.marker in new]
            history.append(f"#{launch} killed by {', '.join(killed_by)} (rc {done.returncode})")
            if done.returncode == 0:
                raise fail(f"launch #{launch} fired {killed_by} but exited 0", done.stdout)
            last = out / "ckpt" / "last.ckpt"
            if last.exists() and not ckpt_io.is_loadable(last):
                raise fail(f"after launch #{launch}, 'last.ckpt' does not load")
        else:
            raise fail("the last launch was still killed: more launches than kill points")

        try:
            ref = self._refs[c].result()
        except AssertionError as err:
            raise fail(str(err)) from None
        early = sum(1 for k in plan.kills if k.kind == "timer" and k.marker in fired)
        problems = compare(ref, out, c.world, launches=len(history), early_kills=early)
        problems += check_folder(out / "ckpt")
        unfired = [str(k) for k in plan.kills if k.always_fires and k.marker not in fired]
        if unfired:
            problems.append(f"kill points never reached: {unfired}")
        if problems:
            raise fail("\n  ".join(problems))
        return f"{plan.describe()}\n  launches: {'; '.join(history)}"


@pytest.fixture(scope="session")
def kill_runner(request, tmp_path_factory):
    # Only the runs this session selected (one, when a failure is replayed by its test id).
    selected = sorted({item.callspec.params["index"] for item in request.session.items
                       if getattr(item, "originalname", None) == "test_random_kills_then_resume_is_bitwise_exact"})
    print(f"\n[test_kill_random] base seed {BASE_SEED}, runs {selected}, {JOBS} at a time "
          f"(DLTRAIN_TEST_SEED={base_seed()} reproduces all of them)")
    runner = Runner(tmp_path_factory.mktemp("kill-random"), [SEEDS[i] for i in selected], JOBS)
    yield runner
    runner.close()


@pytest.mark.timeout(900)  # the runs execute in the background: a test may wait for its run a while
@pytest.mark.parametrize("index", range(RUNS), ids=_run_id)
def test_random_kills_then_resume_is_bitwise_exact(kill_runner, index):
    seed = SEEDS[index]
    try:
        report, failure = kill_runner.futures[seed].result(), None
    except AssertionError as err:
        report, failure = None, str(err)
    if failure is not None:
        pytest.fail(failure, pytrace=False)
    print(f"\n{report}")


def test_draws_cover_every_option_and_kill_point():
    """The draws alone (no launch): every value of every option in each pool, every kind of kill point over the
    runs (under fsdp2 too, with every phase of a sharded save), and epochs that are resumed twice (the second time
    from a checkpoint written after the first resume)."""
    for pool_seed in range(BASE_SEED // POOL_SPAN, BASE_SEED // POOL_SPAN + 50):
        pool = config_pool(pool_seed)
        for dim, values in [("world", {1, 2}), ("workers", {0, 2}), ("data", {"map", "stream"}),
                            ("scheduler", {"step", "epoch"}), ("strategy", {"ddp", "fsdp2"}),
                            ("async_save", {False, True})]:
            assert {getattr(c, dim) for c in pool} == values
    plans = [draw(seed) for seed in range(BASE_SEED, BASE_SEED + 80 * POOL_SPAN, 7)]
    assert {(p.config.strategy, p.config.world, p.config.workers, p.config.data, p.config.scheduler)
            for p in plans} == {(st, w, j, d, s) for st in ("ddp", "fsdp2") for w in (1, 2) for j in (0, 2)
                                for d in ("map", "stream") for s in ("step", "epoch")}
    for strategy in ("ddp", "fsdp2"):
        kinds = {k.kind for p in plans if p.config.strategy == strategy for k in p.kills}
        assert kinds == {"step", "epoch", "save", "timer"}, strategy
        kinds = {k.kind for p in plans if p.config.strategy == strategy and p.config.async_save for k in p.kills}
        assert kinds == {"step", "epoch", "save", "timer"}, f"{strategy}, async_save"
    assert all(1 <= len(p.kills) <= 3 for p in plans)
    phases = {(p.config.world, k.args[3], k.args[5]) for p in plans for k in p.kills
              if k.kind == "save" and p.config.strategy == "fsdp2"}
    assert {(phase, rank) for _, phase, rank in phases} >= {(phase, "0") for phase in SHARDED_SAVE_PHASES}
    assert (2, "write", "1") in phases  # a rank other than zero killed writing its shards
    twice = 0
    for p in plans:
        steps = sorted(int(k.args[1].split(":")[0]) for k in p.kills if k.kind == "step")
        twice += any((a - 1) // STEPS_PER_EPOCH == (b - 1) // STEPS_PER_EPOCH
                     and (a - 1) // STEPS_PER_EPOCH * STEPS_PER_EPOCH < _ckpt_before(a) < _ckpt_before(b)
                     for a, b in itertools.pairwise(steps))
    assert twice > len(plans) // 5
