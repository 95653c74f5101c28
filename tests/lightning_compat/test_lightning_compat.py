"""Lightning scripts run twice: as written (lightning.pytorch) and after the import rename only (dltrain).

Each script in ``scripts/`` is written against ``lightning.pytorch`` with data generated in the script, CPU only,
no shuffling (the same data order under both), and prints its final metrics as JSON on its last line. The test
applies the rename of issue 13 (the only change a Lightning user makes), runs both in subprocesses and compares.
The subprocesses are forked from two servers that imported Lightning, or dltrain, once (tests/helpers/
forkserver.py): each script still starts from a fresh interpreter's state, without paying the imports 22 times.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.forkserver import ForkServer

SCRIPTS = Path(__file__).parent / "scripts"

# The rename, applied to the whole text (whole words; the longer names first).
RENAMES: list[tuple[str, str]] = [
    (r"\bpytorch_lightning\b", "lightning.pytorch"),  # the package's older name, same modules
    (r"\bimport lightning\.pytorch as\b", "import dltrain as"),  # import lightning.pytorch as pl; pl.Trainer
    (r"\bimport lightning as\b", "import dltrain as"),  # Lightning's README: import lightning as L; L.Trainer
    (r"\bfrom lightning import\b", "from dltrain import"),  # from lightning import LightningModule, Trainer
    # where LightningModule and Trainer are defined (Lightning's own templates import them from there)
    (r"\blightning\.pytorch\.(core|trainer)(\.[a-z_][a-z0-9_]*)*\b", "dltrain"),
    (r"\bfrom lightning\.pytorch\.cli import\b", "from dltrain import"),
    # lightning.pytorch.<m>[.<sub>] -> dltrain.<m>
    # (submodules only: a class path such as "lightning.pytorch.loggers.TensorBoardLogger" keeps its class name)
    (r"\blightning\.pytorch\.(callbacks|loggers|profilers|tuner)(\.[a-z_][a-z0-9_]*)*\b", r"dltrain.\1"),
    (r"\bfrom lightning\.pytorch import\b", "from dltrain import"),
    (r"\bLightningDataModule\b", "DataModule"),
    (r"\bLightningModule\b", "Task"),
    (r"\bLightningCLI\b", "CLI"),
    (r"\bTQDMProgressBar\b", "ProgressBar"),
]


def rename(source: str) -> str:
    """Lightning's imports and class names -> dltrain's (README "Coming from Lightning")."""
    for pattern, replacement in RENAMES:
        source = re.sub(pattern, replacement, source)
    return source


def test_rename():
    src = (
        "from lightning.pytorch import LightningModule, LightningDataModule, Trainer\n"
        "from lightning.pytorch.callbacks import TQDMProgressBar, BaseFinetuning\n"
        "from lightning.pytorch.loggers import CSVLogger\nfrom lightning.pytorch.cli import LightningCLI\n"
        "class M(LightningModule): pass\n"
        "from lightning.pytorch.callbacks.weight_averaging import EMAWeightAveraging\n"
        "from lightning.pytorch.tuner import Tuner\nfrom lightning.pytorch.profilers import AdvancedProfiler\n"
        "import lightning.pytorch as pl\nimport pytorch_lightning as pl2\nclass N(pl.LightningModule): pass\n"
        "from lightning.pytorch.core import LightningModule\nfrom lightning.pytorch.trainer.trainer import Trainer\n"
        "from pytorch_lightning.callbacks import EarlyStopping\n"
        "import lightning as L\nclass O(L.LightningModule): pass\nfrom lightning import Trainer, seed_everything\n"
        "args = ['--trainer.logger', 'lightning.pytorch.loggers.TensorBoardLogger']\n"
    )
    assert rename(src) == (
        "from dltrain import Task, DataModule, Trainer\n"
        "from dltrain.callbacks import ProgressBar, BaseFinetuning\n"
        "from dltrain.loggers import CSVLogger\nfrom dltrain import CLI\n"
        "class M(Task): pass\n"
        "from dltrain.callbacks import EMAWeightAveraging\n"
        "from dltrain.tuner import Tuner\nfrom dltrain.profilers import AdvancedProfiler\n"
        "import dltrain as pl\nimport dltrain as pl2\nclass N(pl.Task): pass\n"
        "from dltrain import Task\nfrom dltrain import Trainer\n"
        "from dltrain.callbacks import EarlyStopping\n"
        "import dltrain as L\nclass O(L.Task): pass\nfrom dltrain import Trainer, seed_everything\n"
        "args = ['--trainer.logger', 'dltrain.loggers.TensorBoardLogger']\n"
    )


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory):
    """One fork server per side, each having imported its library (and torch) once."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0", "PL_DISABLE_FORK": "1"}
    root = tmp_path_factory.mktemp("fork-servers")
    made = {"lightning": ForkServer(["torch", "lightning.pytorch"], env, root / "lightning"),
            "dltrain": ForkServer(["torch", "dltrain"], env, root / "dltrain")}
    yield made
    for server in made.values():
        server.close()


def run_script(server: ForkServer, source: str, cwd: Path, args: list[str], nproc: int = 1,
               env: dict[str, str] | None = None) -> dict:
    """Run the script (forked from ``server``; under ``torchrun --nproc_per_node=nproc`` when ``nproc > 1``, with
    ``env``); its last JSON line."""
    path = cwd / "script.py"
    path.write_text(source)
    if nproc == 1:
        done = server.run(path, args, cwd=cwd, timeout=240)
    else:
        full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0", "PL_DISABLE_FORK": "1",
                    **(env or {})}
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
        done = subprocess.run([*launcher, str(path), *args], cwd=cwd, env=full_env, capture_output=True, text=True,
                              timeout=240)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-25:]
        raise AssertionError("script failed:\n" + "\n".join(tail))
    return json.loads([line for line in done.stdout.strip().splitlines() if line.startswith("{")][-1])


def _missing(reason: str) -> pytest.MarkDecorator:
    return pytest.mark.xfail(strict=True, reason=f"dltrain lacks: {reason}")


# script -> (command-line arguments, marks). The xfail reasons say what dltrain is missing for it (issue 13).
CASES: dict[str, tuple[list[str], list[pytest.MarkDecorator]]] = {
    "a_datamodule": ([], []),
    "b_cli": ([], []),
    "c_gan": ([], []),
    "d_finetuning": ([], []),
    "e_rl_iterable": ([], []),
    "f_multi_val": ([], []),
    "g_profiler": ([], []),
    "h_hook_order": ([], []),
    "i_hparams_checkpoint": ([], []),
    "j_limits": ([], []),
    "k_predict": ([], []),
    # issue 22: the finders, weight averaging, a prediction writer and Lightning's other callbacks
    "lr_finder": ([], []),
    "batch_size_finder": ([], []),
    "ema_weight_averaging": ([], []),
    "ema_fsdp2": ([], [pytest.mark.distributed]),
    "swa": ([], []),
    "prediction_writer": ([], []),
    "schedules_and_lambdas": ([], []),
    "pruning": ([], []),
    "spike_and_exception": ([], []),
    "rich_and_profilers": ([], []),
    "task_members": ([], []),
    # issue 22: checkpoint names and folders, MLflow, the CLI's parser and class paths, the warnings
    "l_checkpoint_names": ([], []),
    "m_mlflow": ([], []),
    "n_cli_lightning_classes": ([], []),
    "o_warnings": ([], []),
    "p_stop_epochs": ([], []),
    "q_import_spellings": ([], []),
    "r_everyday": ([], []),
    "s_callback_state": ([], []),
    "t_training_extras": ([], []),
    "u_loaders_and_loggers": ([], []),
    "v_odds_and_ends": ([], []),
    "x_hparams_loggers": ([], []),
    "y_manual_and_properties": ([], []),
    "z_readme_autoencoder": ([], []),
    "aa_task_data_hooks": ([], []),
    "ab_cli_autoencoder": ([], []),
    "ac_eval_after_fit": ([], []),
    "af_val_schedule": ([], []),
    "ag_checkpoint_schedule": ([], []),
    "ai_log_grid": ([], []),
    "aj_steps_grid": ([], []),
    # issue 22 item 10: the Trainer's arguments
    "trainer_arguments": ([], []),
}
# Scripts run on several processes (torchrun), and environment variables for one side only.
NPROC: dict[str, int] = {"ema_fsdp2": 2}
ENV: dict[str, dict[str, dict[str, str]]] = {"ema_fsdp2": {"dltrain": {"COMPAT_STRATEGY": "fsdp2"}}}


@pytest.mark.slow  # two runs per script, forked from servers that imported Lightning or dltrain once
@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=marks, id=n) for n, (_, marks) in sorted(CASES.items())]
)
def test_same_results_after_rename(name, tmp_path, servers):
    source = (SCRIPTS / f"{name}.py").read_text()
    args = CASES[name][0]
    (tmp_path / "lightning").mkdir()
    (tmp_path / "dltrain").mkdir()
    nproc, env = NPROC.get(name, 1), ENV.get(name, {})
    expected = run_script(servers["lightning"], source, tmp_path / "lightning", args, nproc, env.get("lightning"))
    got = run_script(servers["dltrain"], rename(source), tmp_path / "dltrain", args, nproc, env.get("dltrain"))
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert_same(got[key], value, key)


def assert_same(got, expected, where: str) -> None:
    """Equal, floats (also inside lists and dicts) to a relative 1e-5."""
    if isinstance(expected, float):
        assert got == pytest.approx(expected, rel=1e-5, abs=1e-6), where
    elif isinstance(expected, list) and isinstance(got, list) and len(got) == len(expected):
        for i, (a, b) in enumerate(zip(got, expected)):
            assert_same(a, b, f"{where}[{i}]")
    elif isinstance(expected, dict) and isinstance(got, dict) and got.keys() == expected.keys():
        for k in expected:
            assert_same(got[k], expected[k], f"{where}.{k}")
    else:
        assert got == expected, where
