"""Two ranks x two workers over 7 uneven shards under torchrun (gloo), then a resume on one rank."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dltrain.data import StreamingDataset
from tests.helpers.distributed import run_distributed
from tests.helpers.shards import ShardSet, as_list, epoch_keys, key_of

SCRIPT = Path(__file__).with_name("_ddp_stream.py")


@pytest.mark.distributed
def test_two_ranks_two_workers(shard_set: ShardSet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run_distributed(SCRIPT, [shard_set.pattern, str(tmp_path)], nproc=2, timeout=240)
    r = [json.loads((tmp_path / f"rank{i}.json").read_text()) for i in range(2)]
    assert [x["world"] for x in r] == [2, 2]
    everything = shard_set.all_keys
    n, bs = len(everything), 4

    # Evaluation: every sample exactly once over the ranks, no padding.
    ev = [k for x in r for b in x["eval"] for k in b]
    assert sorted(ev) == sorted(everything) and len(ev) == n
    assert [x["eval_len"] for x in r] == [len(x["eval"]) for x in r]

    # Training: same batch count on every rank, no duplicate within an epoch, leftover changes per epoch.
    per_rank = n // (2 * bs)
    leftovers = []
    for epoch in range(2):
        seen = [k for x in r for b in x["train"][epoch] for k in b]
        assert [len(x["train"][epoch]) for x in r] == [per_rank, per_rank] == [x["train_len"] for x in r]
        assert len(seen) == len(set(seen)) == per_rank * 2 * bs
        leftovers.append(set(everything) - set(seen))
    assert leftovers[0] != leftovers[1]
    # Same order with 0 workers; the ranks see different samples.
    assert [x["train_w0"] for x in r] == [x["train"][0] for x in r]
    # Resume at batch 3 gives the uninterrupted sequence on every rank.
    assert [x["resumed"] for x in r] == [x["train"][1] for x in r]
    assert [x["resumed_len"] for x in r] == [per_rank, per_rank]

    # Resume the world-size-2 checkpoint on 1 rank: finishes the epoch with no repeat and no skip.
    state = r[0]["state"]
    assert state["world_size"] == 2 and state["batches"] == 3
    consumed = {k for x in r for b in x["train"][1][:3] for k in b}
    remaining = {k for x in r for b in x["train"][1][3:] for k in b}
    loader = StreamingDataset(shard_set.pattern, batch_size=bs, shuffle_buffer=10, seed=7, map=key_of,
                              collate_fn=as_list).loader(num_workers=2)
    loader.load_state_dict(state)
    loader.set_epoch(1)
    rest = [k for b in epoch_keys(loader) for k in b]
    assert len(rest) == len(set(rest)) and not set(rest) & consumed
    assert set(rest) == remaining  # 2 ranks' remainder fits whole batches of 4 on one rank
    assert len(loader) == 3 + len(rest) // bs
