"""SampleLedger and `dltrain audit` in one process: what the ledger records, how the audit keeps a chain of
rounds, and that it reports exactly what was damaged. (Kills and world-size changes: tests/distributed/
test_kill_random.py audits every streaming run it kills.)"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from tests.helpers.seeds import seed_for
from tests.helpers.shards import make_shards
from tests.helpers.tasks import loader as tensor_loader

import dltrain
from dltrain.audit import audit, render
from dltrain.callbacks import ModelCheckpoint, SampleLedger
from dltrain.cli import main as cli_main
from dltrain.data import StreamingDataset
from dltrain.errors import ConfigurationError

SEED = seed_for(__name__)  # DLTRAIN_TEST_SEED replays it (tests/helpers/seeds.py)


def to_xy(sample: dict) -> dict:
    return {"x": torch.tensor(sample["npy"], dtype=torch.float32) / 100, "key": sample["__key__"]}


class KeyTask(dltrain.Task):
    """Records the keys of every batch it trains on."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Linear(3, 1)
        self.seen: list[tuple[int, int, list[str]]] = []

    def training_step(self, batch, batch_idx):
        self.seen.append((self.current_epoch, batch_idx, list(batch["key"])))
        return self.net(batch["x"]).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


class FailAt(dltrain.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, task, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            raise RuntimeError("stop here")


def trainer(root: Path, *callbacks, epochs: int = 2) -> dltrain.Trainer:
    return dltrain.Trainer(accelerator="cpu", max_epochs=epochs, default_root_dir=str(root), logger=False,
                           enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                           callbacks=[SampleLedger(), *callbacks])


def stream(shards, batch_size: int) -> StreamingDataset:
    return StreamingDataset(shards.pattern, batch_size=batch_size, map=to_xy, seed=5, shuffle_buffer=8)


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory):
    """One uninterrupted 2-epoch run with random shard sizes and batch size (seed printed on failure)."""
    rng = random.Random(SEED)
    root = tmp_path_factory.mktemp("ledger")
    shards = make_shards(root / "shards", num_shards=rng.randint(3, 6), min_size=1, max_size=15, seed=SEED)
    batch = rng.randint(2, 5)
    task = KeyTask()
    trainer(root / "run").fit(task, stream(shards, batch))
    return root / "run", shards, batch, task


def batch_lines(run: Path) -> tuple[Path, list[str], list[int]]:
    (path,) = (run / "ledger").glob("round-*-rank0.jsonl")
    lines = path.read_text().splitlines()
    return path, lines, [i for i, line in enumerate(lines) if json.loads(line)["kind"] == "batch"]


def test_the_ledger_records_what_the_task_trained_on_and_the_audit_agrees(clean_run):
    run, shards, batch, task = clean_run
    where = f"seed {SEED}, shards {shards.counts}, batch {batch}"
    report = audit(run)
    total = sum(shards.counts)
    planned = total // batch * batch  # one rank: the plan drops the leftover that does not fill a batch
    assert report.ok, f"{where}\n{render(report)}"
    assert [(e.epoch, e.finished, e.seen, e.duplicates, e.missing, e.planned) for e in report.epochs] == [
        (0, True, planned, 0, 0, planned), (1, True, planned, 0, 0, planned)], where
    _, lines, batches = batch_lines(run)
    recorded = [json.loads(lines[i]) for i in batches]
    assert [(r["epoch"], r["batch"], r["keys"]) for r in recorded] == task.seen, where
    for r in recorded:  # shard and index name the same sample as the key
        assert [shards.keys[s][i] for s, i in zip(r["shards"], r["indices"])] == r["keys"], where


def test_an_interrupted_round_counts_only_up_to_the_checkpoint_the_next_round_resumed_from(tmp_path):
    rng = random.Random(SEED)
    shards = make_shards(tmp_path / "shards", num_shards=4, min_size=5, max_size=12, seed=SEED)
    batch = rng.randint(2, 4)
    steps_per_epoch = sum(shards.counts) // batch
    every = rng.randint(2, 3)
    fail_at = rng.randint(every + 1, 2 * steps_per_epoch - 1)
    while fail_at % every == 0:
        fail_at -= 1
    where = f"seed {SEED}, shards {shards.counts}, batch {batch}, checkpoint every {every}, failure at {fail_at}"
    run = tmp_path / "run"
    with pytest.raises(RuntimeError, match="stop here"):
        trainer(run, FailAt(fail_at), ModelCheckpoint(dirpath=run / "ckpt", every_n_epochs=1, every_n_train_steps=every)).fit(
            KeyTask(), stream(shards, batch))
    task = KeyTask()
    trainer(run, ModelCheckpoint(dirpath=run / "ckpt", every_n_epochs=1, every_n_train_steps=every)).fit(
        task, stream(shards, batch), ckpt_path="last")
    report = audit(run)
    assert report.ok, f"{where}\n{render(report)}"
    first, second = report.rounds
    # The last checkpoint before the failure: a step checkpoint, or the end of an epoch the failure came after.
    last = max(fail_at // every * every, (fail_at - 1) // steps_per_epoch * steps_per_epoch)
    assert first.batches_discarded == fail_at - last, where
    assert first.batches_kept + second.batches_kept == 2 * steps_per_epoch, where
    assert all(e.finished and e.seen == steps_per_epoch * batch for e in report.epochs), where


def test_a_duplicated_and_a_missing_stretch_are_reported_exactly(clean_run, tmp_path):
    run, shards, batch, _ = clean_run
    rng = random.Random(SEED)
    copy = tmp_path / "copy"
    (copy / "ledger").mkdir(parents=True)
    path, lines, batches = batch_lines(run)
    n = len(batches) // 2  # batches per epoch
    # Epoch 0: a stretch of batches appears twice; epoch 1: a stretch is gone.
    a = rng.randrange(n)
    dup = batches[a : a + rng.randint(1, min(3, n - a))]
    b = rng.randrange(n, 2 * n)
    gone = batches[b : b + rng.randint(1, min(3, 2 * n - b))]
    out = []
    for i, line in enumerate(lines):
        if i in gone:
            continue
        out.append(line)
        if i == dup[-1]:
            out += [lines[j] for j in dup]
    (copy / "ledger" / path.name).write_text("\n".join(out) + "\n")
    report = audit(copy)
    sizes = {i: len(json.loads(lines[i])["keys"]) for i in batches}
    where = f"seed {SEED}, duplicated batch lines {dup}, removed {gone}"
    assert not report.ok, where
    e0, e1 = report.epochs
    assert (e0.duplicates, e0.missing) == (sum(sizes[i] for i in dup), 0), where
    assert (e1.duplicates, e1.missing) == (0, sum(sizes[i] for i in gone)), where
    # Examples are named "url#index" (with the key when some kept batch recorded it): they are removed samples.
    urls = json.loads(lines[0])["source"]["urls"]
    gone_ids = {f"{urls[sh]}#{ix}" for i in gone for sh, ix in zip(json.loads(lines[i])["shards"],
                                                                    json.loads(lines[i])["indices"])}
    assert e1.missing_examples and all(example.split(" (")[0] in gone_ids for example in e1.missing_examples), where
    assert len(report.problems) == 2 and "epoch 0: " in report.problems[0] and "epoch 1: " in report.problems[1]


def test_a_line_cut_by_a_kill_is_skipped_a_damaged_one_is_a_problem(clean_run, tmp_path):
    run, *_ = clean_run
    path, lines, batches = batch_lines(run)
    cut = tmp_path / "cut" / "ledger"
    cut.mkdir(parents=True)
    (cut / path.name).write_text("\n".join(lines[: batches[-1]]) + "\n" + lines[batches[-1]][:17])
    report = audit(cut.parent)
    assert report.skipped_lines == [f"{path.name}:{batches[-1] + 1}"]
    # That round did not finish: it is kept up to its last checkpoint (the default one at the end of epoch 0).
    n = len(batches) // 2
    assert report.ok and report.rounds[0].kept_until == (1, 0)
    assert (report.rounds[0].batches_kept, report.rounds[0].batches_discarded) == (n, n - 1)
    assert [(e.epoch, e.finished) for e in report.epochs] == [(0, True)]
    damaged = tmp_path / "damaged" / "ledger"
    damaged.mkdir(parents=True)
    lines[batches[2]] = lines[batches[2]][:-5]
    (damaged / path.name).write_text("\n".join(lines) + "\n")
    report = audit(damaged.parent)
    assert [p for p in report.problems if "damaged ledger line" in p] == [
        f"{path.name}:{batches[2] + 1}: damaged ledger line (not JSON); the ledger cannot be trusted"]


def test_a_round_resumed_from_a_checkpoint_the_ledger_never_saw_is_a_problem(tmp_path):
    shards = make_shards(tmp_path / "shards", num_shards=3, min_size=6, max_size=9, seed=SEED)
    run = tmp_path / "run"
    with pytest.raises(RuntimeError):
        trainer(run, FailAt(5), ModelCheckpoint(dirpath=run / "ckpt", every_n_epochs=1, every_n_train_steps=2)).fit(
            KeyTask(), stream(shards, 3))
    for f in (run / "ledger").glob("*.jsonl"):
        f.unlink()  # the first round's ledger is lost
    trainer(run, ModelCheckpoint(dirpath=run / "ckpt", every_n_epochs=1, every_n_train_steps=2)).fit(
        KeyTask(), stream(shards, 3), ckpt_path="last")
    report = audit(run)
    assert any("resumed at epoch 0, batch 4, where no earlier round's ledger recorded a checkpoint" in p
               for p in report.problems), render(report)
    assert report.epochs[0].missing == 12  # the 4 batches of 3 samples before the checkpoint


def test_the_command_line(clean_run, tmp_path, capsys):
    run, *_ = clean_run
    assert cli_main(["audit", str(run)]) == 0
    assert "OK: no sample trained twice" in capsys.readouterr().out
    assert cli_main(["audit", str(run), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is True and [e["epoch"] for e in report["epochs"]] == [0, 1]
    assert cli_main(["audit", str(tmp_path)]) == 2
    assert "no sample ledger" in capsys.readouterr().err
    bad = tmp_path / "bad" / "ledger"
    bad.mkdir(parents=True)
    path, lines, batches = batch_lines(run)
    (bad / path.name).write_text("\n".join([*lines, lines[batches[0]]]) + "\n")  # one batch trained twice
    assert cli_main(["audit", str(bad.parent)]) == 1
    assert "1 problem(s)" in capsys.readouterr().out


def test_a_loader_that_cannot_name_its_samples_is_refused(tmp_path):
    class Plain(dltrain.Task):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Linear(4, 1)

        def training_step(self, batch, batch_idx):
            return self.net(batch[0]).pow(2).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    with pytest.raises(ConfigurationError, match="SampleLedger needs a training loader that says which samples"):
        trainer(tmp_path).fit(Plain(), tensor_loader(16, 4))


def test_ids_are_shard_and_index_in_shard(clean_run):
    """The flat sample numbering the audit uses (shard offset + index) covers each sample once."""
    run, shards, *_ = clean_run
    _, lines, batches = batch_lines(run)
    offsets = np.concatenate([[0], np.cumsum(shards.counts)])
    flat = [offsets[s] + i for line in (json.loads(lines[j]) for j in batches) for s, i in
            zip(line["shards"], line["indices"])]
    assert all(0 <= f < offsets[-1] for f in flat)


def test_an_epoch_cut_short_by_limit_train_batches_is_not_missing_samples(tmp_path):
    shards = make_shards(tmp_path / "shards", num_shards=3, min_size=6, max_size=9, seed=SEED)
    run = tmp_path / "run"
    task = KeyTask()
    trainer_ = trainer(run)
    trainer_.limit_train_batches = 3
    trainer_.fit(task, stream(shards, 2))
    report = audit(run)
    assert report.ok, render(report)
    assert [(e.finished, e.cut_short, e.seen, e.missing) for e in report.epochs] == [(False, True, 6, 0)] * 2
    assert "cut short" in render(report)
