"""A long temporary folder: loader workers would hang the fit, dltrain says why instead.

torch hands each batch from a worker to the main process through a UNIX socket under the temporary folder; when
that path is over Linux's 107 bytes the worker's queue thread prints an error and drops the batch, and the main
process waits for it forever (it hung the suite once: a test pointed ``tempfile`` at a folder under pytest's
``tmp_path``). The fit must fail at once with an error that names the folder and the fix, for a plain
``DataLoader`` and for a ``StreamingDataLoader``; a short folder must keep working.
"""

from __future__ import annotations

import multiprocessing.process
import sys
import tempfile

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from dltrain import _compat
from dltrain.data import StreamingDataLoader, StreamingDataset
from dltrain.errors import ConfigurationError
from tests.helpers.shards import make_shards
from tests.helpers.tasks import quiet_trainer

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux's socket path limit")


@pytest.fixture
def temp_folder(monkeypatch):
    """Point ``tempfile`` (and so multiprocessing's per-process folder) at a folder of the test's choosing."""
    config = multiprocessing.process.current_process()._config  # where multiprocessing caches its folder
    saved = config.get("tempdir")

    def use(folder) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        monkeypatch.setattr(tempfile, "tempdir", str(folder))
        config.pop("tempdir", None)

    yield use
    if saved is None:
        config.pop("tempdir", None)
    else:
        config["tempdir"] = saved


def _fit(tmp_path, loader) -> int:
    import dltrain

    class Tiny(dltrain.Task):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Linear(2, 1)

        def training_step(self, batch, batch_idx):
            x = batch["x"] if isinstance(batch, dict) else batch[0]
            return self.net(x).pow(2).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    trainer = quiet_trainer(tmp_path / "run", max_epochs=1)
    trainer.fit(Tiny(), loader)
    return trainer.global_step


@pytest.mark.timeout(120)  # without the check this hangs: the timeout turns it into a failure
def test_a_too_long_temporary_folder_is_an_error_not_a_hang(tmp_path, temp_folder):
    long_folder = tmp_path / ("d" * 90)
    temp_folder(long_folder)
    plain = DataLoader(TensorDataset(torch.randn(8, 2)), batch_size=4, num_workers=1)
    with pytest.raises(ConfigurationError, match=r"temporary folder .*ddddd.* over Linux's 107.*TMPDIR"):
        _fit(tmp_path, plain)

    shards = make_shards(tmp_path / "shards", num_shards=2, min_size=4, max_size=4, seed=1)
    data = StreamingDataset(shards.pattern, batch_size=4, seed=0,
                            map=lambda s: {"x": torch.tensor(s["npy"][:2], dtype=torch.float32)})
    with pytest.raises(ConfigurationError, match="TMPDIR"):
        _fit(tmp_path, StreamingDataLoader(data, num_workers=1))

    # Without workers nothing goes through a socket: it trains.
    assert _fit(tmp_path, DataLoader(TensorDataset(torch.randn(8, 2)), batch_size=4)) == 2


@pytest.mark.timeout(120)
def test_the_usual_temporary_folder_trains_with_workers(tmp_path):
    path = _compat.loader_worker_socket_path()
    assert path is None or len(path.encode()) <= 107, path
    assert _fit(tmp_path, DataLoader(TensorDataset(torch.randn(8, 2)), batch_size=4, num_workers=1)) == 2
