"""``callback_metrics``, ``logged_metrics`` and ``progress_bar_metrics`` across stages, as Lightning's.

Each stage (fit, validate, test, predict) starts them empty: after ``fit`` then ``validate`` they hold the validation's
values only (they kept the fit's, a stale ``train_loss`` next to the new ``val_loss``). ``logged_metrics`` holds what
the loggers got and the newest step values logged since (under their ``_step`` names), so after a short fit it has the
last step's values, not only the epoch's. Found by running the same script under both libraries (issue 22).
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, TensorDataset

import dltrain


class Logs(dltrain.Task):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        loss = self.layer(batch[0]).pow(2).mean()
        self.log("a", loss, on_step=True, on_epoch=True, prog_bar=True)
        self.log("b", float(batch_idx))
        self.log("hidden", 1.0, logger=False)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("v", float(batch_idx), prog_bar=True)

    def test_step(self, batch, batch_idx):
        self.log("t", float(batch_idx))

    def predict_step(self, batch, batch_idx):
        return self.layer(batch[0])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _data() -> DataLoader:
    return DataLoader(TensorDataset(torch.randn(32, 2, generator=torch.Generator().manual_seed(0))), batch_size=4)


def test_each_stage_starts_its_metrics_empty_and_logged_metrics_hold_the_last_step(tmp_path):
    trainer = dltrain.Trainer(accelerator="cpu", max_epochs=2, default_root_dir=str(tmp_path),
                              enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False,
                              log_every_n_steps=50)  # 16 steps: no logging step, only the epoch ends
    task = Logs()
    trainer.fit(task, _data(), _data())
    # The loggers got a_epoch and v at the epoch ends; a_step and b are the last step's, as in Lightning.
    assert sorted(trainer.logged_metrics) == ["a_epoch", "a_step", "b", "v"]
    assert trainer.logged_metrics["b"] == 7.0
    assert {"a", "a_step", "a_epoch", "b", "v", "hidden"} <= set(trainer.callback_metrics)

    trainer.validate(task, _data())
    assert sorted(trainer.callback_metrics) == ["v"]
    assert sorted(trainer.logged_metrics) == ["v"]
    assert sorted(trainer.progress_bar_metrics) == ["v"]

    trainer.test(task, _data())
    assert sorted(trainer.callback_metrics) == ["t"]
    assert sorted(trainer.logged_metrics) == ["t"]
    assert trainer.progress_bar_metrics == {}

    trainer.predict(task, _data())
    assert trainer.callback_metrics == {} and trainer.logged_metrics == {}


def test_each_loaders_results_hold_what_its_steps_logged():
    """With several test loaders, Lightning's per-loader results hold the values logged while that loader ran (also
    under ``add_dataloader_idx=False`` names) and those logged outside the loaders (epoch end); dltrain gave every
    loader every unsuffixed value. The same name logged from two loaders without the suffix would mix their values:
    Lightning raises, and so does dltrain now (it averaged them). Found by a probe under both libraries (issue 22)."""
    import pytest

    class PerLoader(dltrain.Task):
        def __init__(self, mixed: bool = False) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)
            self.mixed = mixed

        def test_step(self, batch, batch_idx, dataloader_idx=0):
            name = "t" if self.mixed else f"t{dataloader_idx}"
            self.log(name, float(dataloader_idx + 1), add_dataloader_idx=False)
            self.log("s", float(dataloader_idx + 10))

        def on_test_epoch_end(self):
            self.log("end", 5.0)

    data = DataLoader(TensorDataset(torch.randn(8, 2)), batch_size=4)
    trainer = dltrain.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    results = trainer.test(PerLoader(), [data, data], verbose=False)
    assert results == [{"t0": 1.0, "s/dataloader_idx_0": 10.0, "end": 5.0},
                       {"t1": 2.0, "s/dataloader_idx_1": 11.0, "end": 5.0}]
    with pytest.raises(dltrain.DltrainError, match=r"self\.log\('t'.*add_dataloader_idx=False.*loader 0.*loader 1"):
        trainer.test(PerLoader(mixed=True), [data, data], verbose=False)


def test_on_train_start_may_log_without_a_sanity_check():
    """Lightning lets ``on_train_start`` log (an epoch value); dltrain raised 'called outside a Trainer loop' unless a
    sanity check had run just before (found by a probe under both libraries, issue 22)."""

    class StartLogs(Logs):
        def on_train_start(self):
            self.log("start_marker", 1.0)

    data = DataLoader(TensorDataset(torch.randn(8, 2)), batch_size=4)
    trainer = dltrain.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_progress_bar=False,
                              enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=0)
    trainer.fit(StartLogs(), data)
    assert float(trainer.callback_metrics["start_marker"]) == 1.0


def test_epoch_hooks_log_epoch_values_and_logger_false_stays_out_of_logged_metrics(tmp_path):
    """Lightning's per-hook rules: in on_train_epoch_end (and the other once-per-epoch hooks) self.log defaults to
    an epoch value (dltrain made 'm_step'/'m_epoch' of it, and on_step=False alone raised), and on_step=True or
    on_epoch=False there is an error; values logged with logger=False are in callback_metrics but not in
    logged_metrics. 142 of 208 logging cases differed from Lightning's (compat case ai_log_grid)."""
    import pytest

    class EpochEnd(Logs):
        def __init__(self, **kwargs) -> None:
            super().__init__()
            self.kwargs = kwargs

        def on_train_epoch_end(self):
            self.log("m", float(self.current_epoch) + 0.5, **self.kwargs)

    def fit(**kwargs):
        root = tmp_path / str(len(list(tmp_path.iterdir())))
        data = DataLoader(TensorDataset(torch.randn(8, 2)), batch_size=4)
        trainer = dltrain.Trainer(accelerator="cpu", max_epochs=2, enable_progress_bar=False,
                                  enable_model_summary=False, enable_checkpointing=False, log_every_n_steps=1,
                                  default_root_dir=str(root))
        trainer.fit(EpochEnd(**kwargs), data)
        return trainer

    trainer = fit()
    assert float(trainer.callback_metrics["m"]) == 1.5 and "m_step" not in trainer.callback_metrics
    assert trainer.logged_metrics["m"] == 1.5
    assert float(fit(on_step=False).callback_metrics["m"]) == 1.5
    for bad in ({"on_step": True}, {"on_epoch": False}):
        with pytest.raises(dltrain.DltrainError, match=r"self\.log\('m'.*in on_train_epoch_end.*epoch values"):
            fit(**bad)
    hidden = fit(logger=False)
    assert "m" in hidden.callback_metrics and "m" not in hidden.logged_metrics
    assert "hidden" in hidden.callback_metrics and "hidden" not in hidden.logged_metrics  # from training_step
