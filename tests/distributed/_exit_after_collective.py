"""A script whose last act is a collective: the process must exit cleanly (run under torchrun, 2 processes).

Gloo's worker thread drops its reference to a finished collective (and so to the Python-owned result tensors)
shortly after the main thread is woken; that drop needs the GIL. A main thread that keeps the GIL until the
interpreter finalizes makes that worker thread exit mid-destructor, which aborts the process ("terminate called
without an active exception", exit -6). A long switch interval keeps the GIL with the main thread, so without
dltrain's exit handler this script aborts nearly every time. (Nothing is printed after the collective: writing
to stdout releases the GIL too.)
"""

from __future__ import annotations

import sys

import torch

import dltrain
from tests.helpers.tasks import TinyTask, make_data

# A fitted DDP model keeps the process group alive (its reducer holds it) until the interpreter tears it down.
trainer = dltrain.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_progress_bar=False,
                          enable_checkpointing=False, enable_model_summary=False)
trainer.fit(TinyTask(), torch.utils.data.DataLoader(make_data(32), batch_size=4))
sys.setswitchinterval(1.0)
gathered = trainer.fabric.all_gather(torch.full((3,), float(trainer.global_rank)))
assert gathered.shape == (trainer.world_size, 3)
