"""SampleLedger and `dltrain audit` on a `dltrain.data.Mixture`: per-source counts and proportions of a clean run
(sources cycling inside the epoch, so the plan deals some samples twice), and a duplicated and a removed stretch
reported exactly, per source. Randomized: DLTRAIN_TEST_SEED replays a failure (the report prints the command)."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest
from tests.callbacks.test_ledger import KeyTask, to_xy
from tests.helpers.seeds import seed_for
from tests.helpers.shards import make_shards

import dltrain
from dltrain.audit import audit, render
from dltrain.callbacks import SampleLedger
from dltrain.data import Mixture, StreamingDataset

SEED = seed_for(__name__)  # DLTRAIN_TEST_SEED replays it (tests/helpers/seeds.py)
WEIGHTS = [0.5, 0.3, 0.2]


@pytest.fixture(scope="module")
def mixture_run(tmp_path_factory):
    rng = random.Random(SEED)
    root = tmp_path_factory.mktemp("ledger_mix")
    shards = [make_shards(root / n, num_shards=rng.randint(2, 4), min_size=3, max_size=15, seed=SEED + i, prefix=n)
              for i, n in enumerate("abc")]
    batch = rng.randint(2, 4)
    sources = [StreamingDataset(s.pattern, batch_size=batch, map=to_xy, shuffle_buffer=8) for s in shards]
    default = Mixture(sources, weights=WEIGHTS).num_samples
    mix = Mixture(sources, weights=WEIGHTS, seed=SEED, samples_per_epoch=2 * default + rng.randint(0, 5))
    trainer = dltrain.Trainer(accelerator="cpu", max_epochs=2, default_root_dir=str(root / "run"), logger=False,
                              enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                              callbacks=[SampleLedger()])
    trainer.fit(KeyTask(), mix)
    return root / "run", shards, batch, mix


def _lines(run: Path) -> tuple[Path, list[str], list[int]]:
    (path,) = (run / "ledger").glob("round-*-rank0.jsonl")
    lines = path.read_text().splitlines()
    return path, lines, [i for i, line in enumerate(lines) if json.loads(line)["kind"] == "batch"]


def _source_of(shard: int, mix: Mixture) -> int:
    return sum(shard >= first for first in mix._first_shard) - 1


def test_a_clean_mixture_run_is_ok_per_source(mixture_run) -> None:
    run, shards, batch, mix = mixture_run
    report = audit(run)
    where = f"seed {SEED}, sizes {mix.sizes}, batch {batch}, M {mix.num_samples}\n{render(report)}"
    assert report.ok, where
    start = json.loads(_lines(run)[1][0])
    assert start["source"]["sources"] == [[f, f + len(s.paths)] for f, s in zip(mix._first_shard, shards)], where
    planned = mix.num_samples // batch * batch
    for e in report.epochs:
        assert e.finished and e.planned == planned and e.duplicates == e.missing == 0, where
        assert sum(s.trained for s in e.sources) == planned, where
        assert e.seen < planned, where  # sources cycle inside the epoch: some samples are dealt twice
        for s, w in zip(e.sources, WEIGHTS):
            assert s.weight == pytest.approx(w) and s.trained == s.planned, where
            assert abs(s.trained - w * planned) <= 1 + (mix.num_samples - planned), where
    assert "source 2 (shards" in render(report)


def test_a_duplicated_and_a_removed_stretch_are_reported_per_source(mixture_run, tmp_path) -> None:
    run, _, _, mix = mixture_run
    rng = random.Random(SEED)
    path, lines, batches = _lines(run)
    n = len(batches) // 2
    dup = batches[(a := rng.randrange(n)) : a + rng.randint(1, min(3, n - a))]
    gone = batches[(b := rng.randrange(n, 2 * n)) : b + rng.randint(1, min(3, 2 * n - b))]
    # The epoch-0 stretch written twice, the epoch-1 stretch (after it) left out.
    out = lines[: dup[-1] + 1] + [lines[j] for j in dup] + [x for i, x in enumerate(lines) if i > dup[-1] and i not in gone]
    (tmp_path / "ledger").mkdir()
    (tmp_path / "ledger" / path.name).write_text("\n".join(out) + "\n")
    report = audit(tmp_path)
    where = f"seed {SEED}, duplicated batch lines {dup}, removed {gone}\n{render(report)}"

    def per_source(idx: list[int]) -> Counter:
        return Counter(_source_of(s, mix) for i in idx for s in json.loads(lines[i])["shards"])

    assert not report.ok, where
    e0, e1 = report.epochs
    assert [s.duplicates for s in e0.sources] == [per_source(dup)[s] for s in range(3)], where
    assert [s.missing for s in e1.sources] == [per_source(gone)[s] for s in range(3)], where
    assert (e0.duplicates, e0.missing, e1.duplicates) == (sum(per_source(dup).values()), 0, 0), where
    assert e1.missing == sum(per_source(gone).values()), where
    assert any(p.startswith("epoch 0: ") and "duplicate" in p for p in report.problems), where
    assert any(p.startswith("epoch 1: ") and "never trained" in p for p in report.problems), where
