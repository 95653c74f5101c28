"""Lightning 1.x Trainer arguments get a hint to their 2.x spelling (issue 28, item 8).

Before: ``Trainer(gpus=1)`` said only "unknown arguments: 'gpus'", with the list of every argument.
"""

from __future__ import annotations

import inspect
import re

import pytest

import dltrain
from dltrain._lightning1_args import LIGHTNING_1X_ARGUMENTS


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"gpus": 1}, r"'gpus' \(Lightning 1\.x\): use accelerator='gpu', devices=1"),
        ({"gpus": [0, 1]}, r"accelerator='gpu', devices=\[0, 1\]"),
        ({"gpus": -1}, r"accelerator='gpu', devices=-1"),
        ({"gpus": 0}, r"accelerator='cpu'"),
        ({"tpu_cores": 8}, r"'tpu_cores' \(Lightning 1\.x\): use accelerator='tpu', devices=8.*no TPU"),
        ({"num_processes": 2}, r"devices=2"),
        ({"resume_from_checkpoint": "x.ckpt"}, r"fit\(task, \.\.\., ckpt_path='x\.ckpt'\)"),
        ({"replace_sampler_ddp": False}, r"use_distributed_sampler=False"),
        ({"checkpoint_callback": False}, r"enable_checkpointing"),
        ({"auto_select_gpus": True}, r"devices='auto'"),
        ({"progress_bar_refresh_rate": 5}, r"ProgressBar"),
        ({"auto_lr_find": True}, r"Tuner"),
    ],
)
def test_lightning_1x_argument_gets_its_2x_spelling(kwargs, expected):
    with pytest.raises(TypeError, match=expected):
        dltrain.Trainer(**kwargs)


def test_hints_name_arguments_that_exist():
    # Every `name=` a hint sends the user to is a real argument of the Trainer (or of fit), so a renamed argument
    # shows up here instead of in a user's traceback.
    known = set(inspect.signature(dltrain.Trainer.__init__).parameters) | set(
        inspect.signature(dltrain.Trainer.fit).parameters)
    not_trainer = {"dirpath", "max_depth", "refresh_rate", "process_position", "mode"}  # callback/loader arguments
    for name, hint in LIGHTNING_1X_ARGUMENTS.items():
        assert name not in known, f"{name} is a Trainer argument now: drop its hint"
        text = hint if isinstance(hint, str) else hint(None)
        for target in re.findall(r"\b([a-z_]+)=", text):
            assert target in known | not_trainer, f"the hint for {name!r} names {target}=, not an argument"
