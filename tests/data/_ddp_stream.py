"""Worker script for test_ddp_stream.py: run under torchrun (gloo); writes what each rank saw as JSON.

Usage: _ddp_stream.py SHARD_PATTERN OUT_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch.distributed as dist

from dltrain.data import StreamingDataset
from tests.helpers.shards import as_list, epoch_keys, key_of


def main() -> None:
    pattern, out = sys.argv[1], Path(sys.argv[2])
    dist.init_process_group("gloo")
    rank = dist.get_rank()

    def ds(**kw) -> StreamingDataset:
        return StreamingDataset(pattern, batch_size=4, shuffle_buffer=10, seed=7, map=key_of, collate_fn=as_list,
                                **kw)

    result: dict = {"rank": rank, "world": dist.get_world_size()}
    ev = ds(training=False, shuffle=False).loader(num_workers=2)
    result["eval"] = epoch_keys(ev, 0)
    result["eval_len"] = len(ev)

    train = ds().loader(num_workers=2)
    result["train"] = [epoch_keys(train, e) for e in range(2)]
    result["train_len"] = len(train)
    result["train_w0"] = epoch_keys(ds().loader(num_workers=0), 0)

    # Interrupt epoch 1 after 3 batches, resume in a fresh loader.
    first = ds().loader(num_workers=2)
    first.set_epoch(1)
    it = iter(first)
    head = [next(it) for _ in range(3)]
    state = first.state_dict()
    del it
    resumed = ds().loader(num_workers=2)
    resumed.load_state_dict(json.loads(json.dumps(state)))  # as a checkpoint would store it
    resumed.set_epoch(1)
    result["resumed"] = head + epoch_keys(resumed)
    result["resumed_len"] = len(resumed)
    result["state"] = state
    dist.barrier()
    (out / f"rank{rank}.json").write_text(json.dumps(result))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
