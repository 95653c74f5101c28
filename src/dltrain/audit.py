"""`dltrain audit`: what a run trained on, per epoch, from the ledgers `dltrain.callbacks.SampleLedger` wrote.

A run is a chain of rounds (launches of ``fit``); a round that resumed continued from a checkpoint of an earlier
round, so what earlier rounds trained on *after* that checkpoint was thrown away (the model that went on never
saw it). The audit keeps, walking back from the last round, each round's batches from where it started up to
where the next round took over (the last round: up to its end, or its last checkpoint if it did not finish), and
then counts, per epoch, over all ranks:

- **seen**: distinct samples trained on; **duplicates**: trainings beyond the first of a sample;
- **missing**: samples the epoch's plan dealt out that were never trained on, in a finished epoch. The plan (the
  ledger records it) is recomputed here from its pure functions: in training it drops on purpose the leftover that
  does not fill one batch on every rank; those samples are not counted as missing.

For a `dltrain.data.Mixture` (the ledger records each source's shard range) a sample may be dealt more than once
in one mixture epoch (once per epoch of its source, as sources cycle): duplicates are trainings beyond what the plan
dealt, missing are dealt ones not trained. Per epoch and per source it reports planned, trained, duplicates,
missing and the realised proportion next to the epoch's weight (from its plan). In a finished epoch each source's
trainings must be within ``1 + leftover`` samples of ``weight * trained`` (``leftover``: the positions the training
plan drops; the plan's per-source counts are within 1 of ``weight * positions``).

Problems (exit code 1): duplicates, missing samples, a round that resumed from a point where no earlier round
recorded a checkpoint (its ledger before that point is not in the files), ranks of a round that disagree, and
damaged ledger lines (a last line cut by a kill is expected and skipped).

**Replica groups** (``dltrain.FaultTolerant``; start lines carry ``replicas``). Every group's launch is a round of
its own, rounds of different groups run at the same time, and a ledger holds only the batches of committed steps
(with the step number and the wall clock). A round that *joined* a running job by receiving a live group's state
(``healed``) discards nothing. A round that did not (a fresh start, or every group restarted from a checkpoint at
step S) discards the batches of other rounds with a step above S recorded before it joined its first quorum: the
model it trains never saw them. The samples of steps that were not committed, and the shares of a group while it
was dead, were never trained: the audit lists each of them by key (``not_trained``; ``--json`` has all), and they
are not problems; a sample trained twice still is. An epoch cut short (``max_steps``) lists what was dealt out up
to the last batch any group trained. Caveat: a group killed right after a committed step may not have recorded
that step (a line not yet written), and a group whose all-reduce failed may still have contributed to a step the
others committed; such samples are listed as not trained: the list can only err on the side of listing.
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from dltrain.data.mixture import mixture_locator
from dltrain.data.plan import locate, planned_positions, rank_positions, root_of, shard_order

__all__ = ["AuditReport", "EpochAudit", "RoundAudit", "SourceAudit", "audit", "render"]

_FILE = re.compile(r"round-(\d+)-rank(\d+)\.jsonl$")
_END = (math.inf, math.inf)
_EXAMPLES = 5
_LISTED = 50  # samples not trained listed in the text report (--json: all)


@dataclass
class RoundAudit:
    """One launch of ``fit``: where it started, how far the chain keeps it, how many batches that is.

    Example:
        >>> [(r.world_size, r.batches_kept) for r in audit("runs/audited").rounds]  # one launch of fit
        [(1, 14)]
    """

    round: int
    world_size: int
    ranks_found: int
    start: tuple[float, float]  # (epoch, batches done) it resumed at; (0, 0) for a fresh start
    kept_until: tuple[float, float]
    batches_kept: int = 0
    batches_discarded: int = 0
    replica_group: int | None = None  # replica groups: this round's group
    healed: bool = False  # replica groups: joined by receiving a live group's state
    start_step: int = 0  # replica groups: the global step it started at
    joined_ns: int = 0  # replica groups: wall clock before its first quorum


@dataclass
class SourceAudit:
    """One source of a mixture in one epoch.

    Example:
        >>> from dltrain.callbacks import SampleLedger
        >>> from dltrain.data import Mixture, StreamingDataset
        >>> def source(urls):
        ...     return StreamingDataset(urls, batch_size=10, map=lambda s: (torch.as_tensor(s["npy"]),
        ...                                                              torch.as_tensor(s["npy"]).sum(0, keepdim=True)))
        >>> mix = Mixture([source("data/train-{000000..000003}.tar"), source("data/train-{000004..000006}.tar")],
        ...               weights=[0.5, 0.5], seed=0, samples_per_epoch=40)
        >>> trainer = dltrain.Trainer(max_epochs=1, callbacks=[SampleLedger()], default_root_dir="runs/mixed",
        ...                           enable_progress_bar=False)
        >>> trainer.fit(task, mix)
        >>> [(s.source, s.planned, s.trained, s.duplicates) for s in audit("runs/mixed").epochs[0].sources]
        [(0, 20, 20, 0), (1, 20, 20, 0)]
    """

    source: int
    shards: list[int]  # [first, last + 1) in the mixture's shard list
    weight: float | None  # of this epoch (None: no plan recorded)
    planned: int  # positions of this source the plan dealt out
    trained: int  # trainings of its samples
    duplicates: int = 0  # trainings beyond what the plan dealt
    missing: int = 0  # dealt and never trained; finished epochs only
    proportion: float | None = None  # trained / all trainings of the epoch


@dataclass
class EpochAudit:
    """What the chain of checkpoints shows about one epoch: samples seen, trained twice, never trained.

    Example:
        >>> report = audit("runs/audited")  # the run of `AuditReport`'s example
        >>> epoch = report.epochs[-1]
        >>> epoch.finished, epoch.num_samples, epoch.seen
        (True, 70, 70)
    """
    epoch: int
    num_samples: int
    planned: int | None  # samples the epoch's plan deals out (None: no plan recorded)
    finished: bool  # the chain holds this epoch's end, after its whole plan was trained
    cut_short: bool  # the epoch ended early (limit_train_batches, max_steps, a stop): unseen samples not counted
    seen: int = 0
    duplicates: int = 0
    missing: int = 0  # dealt out by the plan and never trained on; counted for finished epochs only
    duplicate_examples: list[str] = field(default_factory=list)
    missing_examples: list[str] = field(default_factory=list)
    sources: list[SourceAudit] = field(default_factory=list)  # a mixture's sources; empty for one dataset
    # Replica groups: every sample dealt out and not trained (failures), by name; not problems.
    not_trained: list[str] = field(default_factory=list)


@dataclass
class AuditReport:
    """The result of `audit`: per round and per epoch, and the problems found (empty when all is well).

    Example:
        >>> from dltrain.callbacks import SampleLedger
        >>> from dltrain.data import StreamingDataset
        >>> data = StreamingDataset("data/train-{000000..000006}.tar", batch_size=10,
        ...                         map=lambda s: (torch.as_tensor(s["npy"]), torch.as_tensor(s["npy"]).sum(0, keepdim=True)))
        >>> trainer = dltrain.Trainer(max_epochs=2, callbacks=[SampleLedger()], default_root_dir="runs/audited",
        ...                           enable_progress_bar=False)
        >>> trainer.fit(task, data)
        >>> report = audit("runs/audited")  # what `dltrain audit runs/audited` reads
        >>> report.ok, [(e.epoch, e.seen, e.duplicates, e.missing) for e in report.epochs]
        (True, [(0, 70, 0, 0), (1, 70, 0, 0)])
    """
    path: str
    rounds: list[RoundAudit]
    epochs: list[EpochAudit]
    problems: list[str]
    skipped_lines: list[str]  # last lines cut short by a kill

    @property
    def ok(self) -> bool:
        """Whether no problem was found."""
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        """The report as JSON-able data (what ``dltrain audit --json`` prints), with ``ok``."""
        out = asdict(self)
        out["ok"] = self.ok
        for r in out["rounds"]:  # inf is not JSON
            r["start"] = [None if math.isinf(x) else x for x in r["start"]]
            r["kept_until"] = [None if math.isinf(x) else x for x in r["kept_until"]]
        return out


def _bound(loops: Mapping[str, Any] | None) -> tuple[float, float]:
    """The ledger position a checkpoint's loop state commits up to (batches before it are kept)."""
    if not loops:
        return (0, 0)
    epoch = int(loops["epoch"])
    if loops.get("phase") == "epoch_end":
        return (epoch + 1, 0)  # the whole epoch, its end included
    return (epoch, int(loops["batches_done"]))


def _position(record: Mapping[str, Any]) -> tuple[float, float]:
    if record["kind"] == "epoch_end":
        return (int(record["epoch"]), math.inf)
    return (int(record["epoch"]), int(record["batch"]))


def _read(path: Path, problems: list[str], skipped: list[str]) -> list[dict[str, Any]]:
    records = []
    lines = path.read_text(encoding="utf-8").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    for number, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines):
                skipped.append(f"{path.name}:{number}")  # cut short by a kill: nothing committed it
            else:
                problems.append(f"{path.name}:{number}: damaged ledger line (not JSON); the ledger cannot be trusted")
    return records


def audit(path: str | Path) -> AuditReport:
    """Audit the ledgers under ``path``.

    ``path`` is a ``ledger`` folder, or a folder holding one (e.g. the run's root); a URL of an object store too:
    its ledger files are read into a temporary folder first.
    """
    from dltrain import _storage

    if _storage.is_remote(path):
        import shutil
        import tempfile

        url = str(path).rstrip("/")
        names = {_storage.basename(e["name"]) for e in _storage.listing(url)}
        prefix = _storage.join(url, "ledger") if "ledger" in names else url
        scratch = Path(tempfile.mkdtemp(prefix="dltrain-audit-"))
        try:
            for entry in _storage.listing(prefix):
                name = _storage.basename(entry["name"])
                if _FILE.search(name):
                    (scratch / name).write_bytes(_storage.read_bytes(_storage.join(prefix, name)))
            report = audit(scratch)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        report.path = url
        return report
    root = Path(path)
    folder = root / "ledger" if (root / "ledger").is_dir() else root
    files = sorted(p for p in folder.glob("round-*-rank*.jsonl") if _FILE.search(p.name))
    if not files:
        raise FileNotFoundError(f"no sample ledger (round-*-rank*.jsonl) under {root}; train with "
                                "callbacks=[SampleLedger()] to write one")
    problems: list[str] = []
    skipped: list[str] = []
    by_round: dict[int, dict[int, list[dict[str, Any]]]] = defaultdict(dict)
    for f in files:
        m = _FILE.search(f.name)
        assert m is not None
        records = _read(f, problems, skipped)
        if not records:
            skipped.append(f"{f.name} (empty: the rank was killed before it wrote a line)")
        by_round[int(m.group(1))][int(m.group(2))] = records

    rounds: list[RoundAudit] = []
    source: dict[str, Any] | None = None
    checkpoints: set[tuple[float, float]] = {(0, 0)}
    for rid in sorted(by_round):
        ranks = by_round[rid]
        starts = {r: recs[0] for r, recs in ranks.items() if recs and recs[0].get("kind") == "start"}
        # A rank killed before its first line was written leaves an empty file: it committed nothing (a
        # checkpoint needs every rank's ledger flushed first). Lines without a start line are damage.
        headless = sorted(r for r, recs in ranks.items() if recs and r not in starts)
        if headless:
            problems.append(f"round {rid}: the ledger of rank(s) {headless} does not begin with a start line")
        if not starts:
            continue
        head = next(iter(starts.values()))
        world = int(head["world_size"])
        replicas = head.get("replicas")
        if replicas is None and len(ranks) != world:
            problems.append(f"round {rid}: ledgers of {len(ranks)} rank(s) found for a world size of {world}")
        begin = {_bound(s.get("resume")) for s in starts.values()}
        if len(begin) != 1:
            problems.append(f"round {rid}: ranks disagree on where the round resumed: {sorted(begin)}")
        start = min(begin)
        healed = bool(replicas and replicas.get("healed"))
        if not healed and start not in checkpoints:
            problems.append(f"round {rid} resumed at epoch {start[0]}, batch {start[1]}, where no earlier round's "
                            "ledger recorded a checkpoint: what was trained before it is not in the ledger")
        if source is None:
            source = head["source"]
        elif head["source"] != source:
            problems.append(f"round {rid} trained on other data than the first round (shard list or counts differ)")
        for recs in ranks.values():
            checkpoints |= {_bound(r["loops"]) for r in recs if r.get("kind") == "checkpoint"}
        resume = head.get("resume") or {}
        rounds.append(RoundAudit(round=rid, world_size=world, ranks_found=len(ranks), start=start, kept_until=_END,
                                 replica_group=None if replicas is None else int(replicas["group"]), healed=healed,
                                 start_step=int(resume.get("global_step", 0)),
                                 joined_ns=0 if replicas is None else int(replicas["joined_ns"])))

    # Walk back: the last round is kept to its end (or its last checkpoint); each earlier one up to where the next
    # one started. Replica groups: rounds run side by side, see `_discarded`.
    if rounds and not any(r.replica_group is not None for r in rounds):
        last = by_round[rounds[-1].round]
        finished = all(any(r.get("kind") == "end" for r in recs) for recs in last.values())
        if not finished:
            ends = [max((_bound(r["loops"]) for r in recs if r.get("kind") == "checkpoint"), default=rounds[-1].start)
                    for recs in last.values()]
            rounds[-1].kept_until = min(ends)
        for i in range(len(rounds) - 2, -1, -1):
            rounds[i].kept_until = min(rounds[i + 1].start, rounds[i + 1].kept_until)

    epochs = _count_epochs(rounds, by_round, source, problems) if source is not None else []
    return AuditReport(path=str(root), rounds=rounds, epochs=epochs, problems=problems, skipped_lines=skipped)


def _count_epochs(rounds: list[RoundAudit], by_round: Mapping[int, Mapping[int, list[dict[str, Any]]]],
                  source: Mapping[str, Any], problems: list[str]) -> list[EpochAudit]:
    counts = np.asarray(source["counts"], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    total = int(offsets[-1])
    ids: dict[int, list[np.ndarray]] = defaultdict(list)
    keys: dict[int, str] = {}
    plans: dict[int, Mapping[str, Any]] = {}
    ended: set[int] = set()
    cut: set[int] = set()  # ended before the plan was trained through on some rank
    reached: dict[int, int] = {}  # replica groups: per epoch, the batches any group trained (kept or not)
    replica_groups = any(r.replica_group is not None for r in rounds)
    for rnd in rounds:
        for recs in by_round[rnd.round].values():
            for rec in recs:
                kind = rec.get("kind")
                if kind == "plan":
                    plans[int(rec["epoch"])] = rec["level"]  # a later round's plan (a re-split) replaces it
                if kind not in ("batch", "epoch_end"):
                    continue
                if rnd.replica_group is None:
                    kept = rnd.start <= _position(rec) < rnd.kept_until
                else:
                    kept = not _discarded(rec, rnd, rounds)
                    if kind == "batch":
                        reached[int(rec["epoch"])] = max(reached.get(int(rec["epoch"]), 0), int(rec["batch"]) + 1)
                if kind == "epoch_end":
                    if kept:
                        epoch = int(rec["epoch"])
                        ended.add(epoch)
                        if int(rec.get("batches", 0)) < int(rec.get("planned_batches", 0)):
                            cut.add(epoch)
                    continue
                if not kept:
                    rnd.batches_discarded += 1
                    continue
                rnd.batches_kept += 1
                flat = offsets[np.asarray(rec["shards"], dtype=np.int64)] + np.asarray(rec["indices"], dtype=np.int64)
                ids[int(rec["epoch"])].append(flat)
                for k, key in zip(flat.tolist(), rec.get("keys", [])):
                    keys.setdefault(k, key)

    index_keys: list[list[str] | None] | None = None

    def name(flat: int) -> str:
        nonlocal index_keys
        shard = int(np.searchsorted(offsets, flat, side="right") - 1)
        key = keys.get(flat)
        if key is None:  # a sample no ledger line names (never trained): its key from the shard index
            if index_keys is None:
                index_keys = _index_keys(source["urls"])
            in_shard = index_keys[shard] if shard < len(index_keys) else None
            key = in_shard[flat - int(offsets[shard])] if in_shard else None
        return f"{source['urls'][shard]}#{flat - int(offsets[shard])}" + (f" ({key})" if key is not None else "")

    def _rank_ids(level: Mapping[str, Any], rank: int, upto: int) -> np.ndarray:
        """The samples of the first ``upto`` positions ``rank`` reads in ``level`` (one dataset)."""
        root = root_of(level)
        order = shard_order(len(counts), int(root["seed"]), int(root["epoch"]), bool(root["shuffle"]))
        shards, indices = locate(rank_positions(level, rank, total)[:upto], order, counts.tolist())
        return offsets[shards] + indices

    def planned_ids(level: Mapping[str, Any]) -> np.ndarray:
        root = root_of(level)
        if "mixture" in root:  # a Mixture's positions and their samples come from its own plan
            where = mixture_locator(root, [counts[lo:hi].tolist() for lo, hi in source["sources"]])
            shards, indices = where(planned_positions(level, int(sum(root["mixture"]["counts"]))))
            return offsets[shards] + indices
        order = shard_order(len(counts), int(root["seed"]), int(root["epoch"]), bool(root["shuffle"]))
        shards, indices = locate(planned_positions(level, total), order, counts.tolist())
        return offsets[shards] + indices

    out = []
    for epoch in sorted(set(ids) | ended):
        seen_counts = np.bincount(np.concatenate(ids[epoch]) if ids[epoch] else np.zeros(0, np.int64),
                                  minlength=total)
        plan = plans.get(epoch)
        dealt = planned_ids(plan) if plan is not None else np.arange(total)
        # A mixture may deal a sample more than once (once per epoch of its source); a single dataset at most once.
        planned_counts = np.bincount(dealt, minlength=total)
        allowed = np.maximum(planned_counts, 1)
        e = EpochAudit(epoch=epoch, num_samples=total, planned=None if plan is None else len(dealt),
                       finished=epoch in ended and epoch not in cut, cut_short=epoch in cut,
                       seen=int((seen_counts > 0).sum()),
                       duplicates=int(np.maximum(seen_counts - allowed, 0).sum()))
        if e.duplicates:
            e.duplicate_examples = [name(k) for k in np.flatnonzero(seen_counts > allowed)[:_EXAMPLES].tolist()]
            problems.append(f"epoch {epoch}: {e.duplicates} duplicate trainings, e.g. {e.duplicate_examples[0]}")
        if replica_groups and plan is not None:
            # Failures leave samples untrained: each is listed, none is a problem. A finished epoch dealt its
            # whole plan; one cut short, what every rank's plan holds up to the last batch a group trained.
            if not e.finished:
                batch = int(root_of(plan)["batch_size"])
                upto = reached.get(epoch, 0) * batch
                dealt_now = np.concatenate([_rank_ids(plan, r, upto) for r in range(int(plan["world_size"]))])
                planned_counts = np.bincount(dealt_now, minlength=total)
            untrained = np.flatnonzero(np.maximum(planned_counts - seen_counts, 0))
            e.not_trained = [name(k) for k in untrained.tolist()]
        elif e.finished:
            short = np.maximum(planned_counts - seen_counts, 0)
            never = np.flatnonzero(short)
            e.missing = int(short.sum())
            if e.missing:
                e.missing_examples = [name(k) for k in never[:_EXAMPLES].tolist()]
                problems.append(f"epoch {epoch}: {e.missing} samples the plan dealt out were never trained on, "
                                f"e.g. {e.missing_examples[0]}")
        if "sources" in source:
            e.sources = _source_audits(e, plan, source["sources"], offsets, seen_counts, planned_counts, problems)
        out.append(e)
    return out


def _index_keys(urls: list[str]) -> list[list[str] | None]:
    """Each shard's sample keys from the shards' index, where it has them (none: an empty list)."""
    from dltrain.data.index import default_index_path, load_index
    from dltrain.errors import DataError

    try:
        index = load_index(default_index_path(urls))
    except (DataError, OSError):
        return []
    return [shard.get("keys") for shard in index.get("shards", [])]


def _discarded(record: Mapping[str, Any], rnd: RoundAudit, rounds: list[RoundAudit]) -> bool:
    """Whether a later start of the job from step S discards this line (replica groups).

    A later start is a round that did not join by receiving a live group's state; it discards a step above S
    recorded before that round joined its first quorum.
    """
    if "step" not in record or "t" not in record:
        return False
    step, when = int(record["step"]), int(record["t"])
    return any(other is not rnd and not other.healed and step > other.start_step and when < other.joined_ns
               for other in rounds)


def _source_audits(e: EpochAudit, plan: Mapping[str, Any] | None, ranges: list[list[int]], offsets: np.ndarray,
                   seen_counts: np.ndarray, planned_counts: np.ndarray, problems: list[str]) -> list[SourceAudit]:
    """Per source of a mixture: planned, trained, duplicates, missing, realised proportion vs weight."""
    mix = root_of(plan).get("mixture") if plan is not None else None
    weights = list(mix["weights"]) if mix else [None] * len(ranges)
    trained_total = int(seen_counts.sum())
    extra = np.maximum(seen_counts - np.maximum(planned_counts, 1), 0)
    short = np.maximum(planned_counts - seen_counts, 0)
    out = []
    for s, ((lo, hi), weight) in enumerate(zip(ranges, weights)):
        a, b = int(offsets[lo]), int(offsets[hi])
        src = SourceAudit(source=s, shards=[int(lo), int(hi)], weight=weight,
                          planned=int(planned_counts[a:b].sum()), trained=int(seen_counts[a:b].sum()),
                          duplicates=int(extra[a:b].sum()), missing=int(short[a:b].sum()) if e.finished else 0,
                          proportion=int(seen_counts[a:b].sum()) / trained_total if trained_total else None)
        if e.finished and mix is not None and weight is not None:
            leftover = int(sum(mix["counts"])) - int(planned_counts.sum())
            off = abs(src.trained - weight * trained_total)
            if off > 1 + leftover:
                problems.append(f"epoch {e.epoch}: source {s} (shards {lo}..{hi - 1}) trained {src.trained} of "
                                f"{trained_total} samples ({src.proportion:.4f}) for weight {weight:.4f}: off by "
                                f"{off:.1f} samples, more than the {1 + leftover} the plan allows")
        out.append(src)
    return out


def _fmt(pos: Iterable[float]) -> str:
    epoch, batch = pos
    if math.isinf(epoch):
        return "end"
    return f"e{int(epoch)}/b{int(batch)}" if not math.isinf(batch) else f"e{int(epoch)}/end"


def render(report: AuditReport) -> str:
    """The report as text: rounds, then one line per epoch, then the verdict."""
    lines = [f"sample ledger of {report.path}", "", "rounds (launches of fit), oldest first:"]
    for r in report.rounds:
        if r.replica_group is not None:
            how = "joined from a live group's state" if r.healed else f"started at step {r.start_step}"
            lines.append(f"  round {r.round}: replica group {r.replica_group}, {how}: {r.batches_kept} batches kept"
                         + (f", {r.batches_discarded} discarded (a later start of the job redid them)"
                            if r.batches_discarded else ""))
            continue
        lines.append(f"  round {r.round}: world size {r.world_size}, from {_fmt(r.start)} to {_fmt(r.kept_until)}: "
                     f"{r.batches_kept} batches kept, {r.batches_discarded} discarded (after the checkpoint the "
                     "next round resumed from)" if r.batches_discarded else
                     f"  round {r.round}: world size {r.world_size}, from {_fmt(r.start)} to {_fmt(r.kept_until)}: "
                     f"{r.batches_kept} batches kept")
    replicas = any(r.replica_group is not None for r in report.rounds)
    lines += ["", f"{'epoch':>5} {'samples':>8} {'planned':>8} {'seen':>8} {'dup':>5} "
                  f"{'untrained' if replicas else 'missing':>8}  state"]
    for e in report.epochs:
        if replicas:
            e = replace(e, missing=len(e.not_trained))
        planned = "?" if e.planned is None else str(e.planned)
        state = ("finished" if e.finished else "cut short (limit_train_batches, max_steps or a stop)"
                 if e.cut_short else "partial (not finished in the chain)")
        lines.append(f"{e.epoch:>5} {e.num_samples:>8} {planned:>8} {e.seen:>8} {e.duplicates:>5} {e.missing:>8}  "
                     f"{state}")
        for src in e.sources:
            weight = "?" if src.weight is None else f"{src.weight:.4f}"
            share = "-" if src.proportion is None else f"{src.proportion:.4f}"
            lines.append(f"      source {src.source} (shards {src.shards[0]}..{src.shards[1] - 1}): weight {weight}, "
                         f"trained {src.trained} ({share}), planned {src.planned}, dup {src.duplicates}, "
                         f"missing {src.missing}")
    untrained = [(e.epoch, name) for e in report.epochs for name in e.not_trained]
    if replicas:
        lines += ["", f"not trained (steps not committed, shares of groups while they were down): {len(untrained)} "
                  "sample(s)" + (":" if untrained else "")]
        shown = untrained[:_LISTED]
        lines += [f"  epoch {epoch}: {name}" for epoch, name in shown]
        if len(untrained) > len(shown):
            lines.append(f"  ... and {len(untrained) - len(shown)} more (dltrain audit --json lists every one)")
    if report.skipped_lines:
        lines += ["", f"skipped, cut short by a kill ({len(report.skipped_lines)}): "
                  f"{', '.join(report.skipped_lines)}"]
    lines.append("")
    if report.ok:
        lines.append("OK: no sample trained twice in an epoch, none missing beyond what the plan drops")
    else:
        lines.append(f"{len(report.problems)} problem(s):")
        lines += [f"  - {p}" for p in report.problems]
    return "\n".join(lines)
