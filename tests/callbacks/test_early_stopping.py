from __future__ import annotations

import math

import pytest
import torch
from tests.helpers.fake_trainer import FakeTrainer

from dltrain._hooks import overrides
from dltrain.callbacks import Callback
from dltrain.callbacks.early_stopping import EarlyStopping
from dltrain.errors import ConfigurationError, DltrainError


def _trainer(**kw):
    base = dict(
        current_epoch=0,
        global_step=0,
        callback_metrics={},
        should_stop=False,
        stage="fit",
        is_global_zero=True,
        val_dataloaders="a validation loader",  # the documented trainer view: None when fit has no validation
        val_check_interval=None,
        sanity_checking=False,
    )
    base.update(kw)
    return FakeTrainer(**base)


def _run(cb, trainer, values, hook=None):
    """Feed one value per epoch; return the epoch at which should_stop became True (or None). ``hook=None``: the
    epoch end as the Trainer runs it (validation's epoch end, then the training epoch's end)."""
    cb.setup(trainer, None, "fit")
    for epoch, v in enumerate(values):
        trainer.current_epoch = epoch
        trainer.callback_metrics = {"val/loss": torch.tensor(v), "train/loss": torch.tensor(v)}
        for name in ([hook] if hook else ["on_validation_epoch_end", "on_train_epoch_end"]):
            getattr(cb, name)(trainer, None)
        if trainer.should_stop:
            return epoch
    return None


def test_stops_after_patience_min_and_max():
    cb = EarlyStopping("val/loss", patience=2)
    assert _run(cb, _trainer(), [1.0, 0.9, 0.95, 0.91, 0.5]) == 3
    assert cb.best_score == pytest.approx(0.9) and cb.wait_count == 2 and cb.stopped_epoch == 3

    cb = EarlyStopping("val/loss", patience=2, mode="max")
    assert _run(cb, _trainer(), [0.1, 0.2, 0.3, 0.3, 0.25]) == 4


def test_min_delta():
    cb = EarlyStopping("val/loss", patience=2, min_delta=0.1)
    assert _run(cb, _trainer(), [1.0, 0.95, 0.92, 0.5]) == 2  # improvements smaller than 0.1 do not count


def test_non_finite_stops_at_once():
    cb = EarlyStopping("val/loss", patience=10)
    assert _run(cb, _trainer(), [1.0, math.nan]) == 1
    assert "not finite" in cb.stop_reason


def test_missing_metric_lists_available():
    cb = EarlyStopping("val/acc")
    trainer = _trainer(callback_metrics={"val/loss": torch.tensor(1.0), "train/loss": torch.tensor(2.0)})
    with pytest.raises(DltrainError, match=r"val/acc.*Available metrics: train/loss, val/loss"):
        cb.on_validation_epoch_end(trainer, None)


def test_check_on_train_and_fallback_without_validation():
    cb = EarlyStopping("train/loss", patience=1, check_on="train")
    assert _run(cb, _trainer(), [1.0, 2.0], hook="on_train_epoch_end") == 1

    # check_on="validation" but the Trainer says there is no validation: train epoch end checks (and is strict).
    cb = EarlyStopping("train/loss", patience=1)
    assert _run(cb, _trainer(val_dataloaders=None), [1.0, 2.0], hook="on_train_epoch_end") == 1
    with pytest.raises(DltrainError):
        EarlyStopping("nope").on_train_epoch_end(_trainer(val_dataloaders=None), None)
    # ... unless the user said check_on_train_epoch_end=False: then it never checks, as Lightning's (it raised that
    # val_loss was missing in a fit without validation; found by a probe under both libraries, issue 22).
    cb = EarlyStopping("nope", check_on_train_epoch_end=False)
    assert _run(cb, _trainer(val_dataloaders=None), [1.0, 2.0], hook="on_train_epoch_end") is None

    # Validation after the epoch's training: checked at the train epoch end by default (Lightning's rule, so that
    # an epoch-level training metric is the epoch's), after validation with check_on_train_epoch_end=False.
    cb = EarlyStopping("val/loss", patience=1)
    assert _run(cb, _trainer(), [1.0, 2.0, 3.0], hook="on_train_epoch_end") == 1
    cb = EarlyStopping("val/loss", patience=1, check_on_train_epoch_end=False)
    assert _run(cb, _trainer(), [1.0, 2.0, 3.0], hook="on_train_epoch_end") is None
    assert _run(cb, _trainer(), [1.0, 2.0, 3.0]) == 1
    # Validation twice per epoch: after each validation.
    cb = EarlyStopping("val/loss", patience=1)
    assert _run(cb, _trainer(val_check_interval=0.5), [1.0, 2.0, 3.0], hook="on_train_epoch_end") is None


def test_validate_stage_and_sanity_check_do_not_count():
    cb = EarlyStopping("val/loss", patience=1)
    trainer = _trainer(stage="validate", callback_metrics={"val/loss": torch.tensor(1.0)})
    cb.on_validation_epoch_end(trainer, None)
    trainer = _trainer(sanity_checking=True, callback_metrics={"val/loss": torch.tensor(1.0)})
    cb.on_validation_epoch_end(trainer, None)
    assert cb.best_score == math.inf and not trainer.should_stop


def test_state_survives_resume():
    cb = EarlyStopping("val/loss", patience=3)
    _run(cb, _trainer(), [1.0, 2.0, 2.0])
    state = cb.state_dict()
    assert state["wait_count"] == 2 and state["best_score"] == 1.0
    resumed = EarlyStopping("val/loss", patience=3)
    resumed.load_state_dict(state)
    trainer = _trainer(current_epoch=3, callback_metrics={"val/loss": torch.tensor(3.0)})
    resumed.on_validation_epoch_end(trainer, None)
    assert trainer.should_stop
    assert cb.state_key == "EarlyStopping{monitor=val/loss,mode=min}"


def test_config_errors_and_hooks():
    with pytest.raises(ConfigurationError):
        EarlyStopping("x", mode="lowest")
    with pytest.raises(ConfigurationError):
        EarlyStopping("x", check_on="step")
    cb = EarlyStopping("x")
    assert overrides(cb, Callback, "on_validation_epoch_end") and not overrides(cb, Callback, "on_train_batch_end")


def test_lightnings_arguments(capsys):
    # Lightning's positional order: monitor, min_delta, patience, verbose, mode.
    cb = EarlyStopping("val/loss", 0.0, 5, False, "max")
    assert (cb.patience, cb.mode) == (5, "max")
    cb = EarlyStopping("val/loss", patience=10, stopping_threshold=0.5)
    assert _run(cb, _trainer(), [1.0, 0.7, 0.4, 0.3]) == 2 and "Stopping threshold reached" in cb.stop_reason
    cb = EarlyStopping("val/loss", patience=10, divergence_threshold=5.0)
    assert _run(cb, _trainer(), [1.0, 3.0, 6.0]) == 2 and "Divergence threshold reached" in cb.stopping_reason_message
    # strict=False: a missing metric skips the check (a warning with verbose).
    lax = EarlyStopping("val/acc", strict=False)
    lax.on_train_epoch_end(_trainer(val_dataloaders=None), None)
    with pytest.warns(RuntimeWarning, match="val/acc"):
        EarlyStopping("val/acc", strict=False, verbose=True).on_train_epoch_end(_trainer(val_dataloaders=None), None)
    # verbose: improvements and the stop are said; log_rank_zero_only silences the other ranks.
    capsys.readouterr()
    _run(EarlyStopping("val/loss", patience=1, verbose=True), _trainer(world_size=1), [1.0, 0.5, 0.6])
    err = capsys.readouterr().err
    assert "New best score: 0.500" in err and "did not improve in the last 1 records" in err
    quiet = EarlyStopping("val/loss", patience=1, verbose=True, log_rank_zero_only=True)
    _run(quiet, _trainer(is_global_zero=False, global_rank=1, world_size=2), [1.0, 0.5, 0.6])
    assert capsys.readouterr().err == ""
