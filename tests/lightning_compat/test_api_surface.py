"""Lightning's public API, enumerated from the installed ``lightning.pytorch``, against dltrain's (issue 22 item 1).

Every public name of ``lightning.pytorch`` and of its ``callbacks``, ``loggers``, ``profilers`` and ``tuner`` modules,
every public member of a ``LightningModule`` and of a ``Trainer`` instance, and every argument of their methods and
of the classes both have, must exist in dltrain under the rename (docs/guides/from-lightning.md), or be refused
with a reason in ``dltrain._refusals.REFUSED`` (docs/guides/from-lightning.md shows that list). Nothing here is typed by hand but the
rename and the names still being built (``PENDING``): a new Lightning release that adds a name fails this test.
"""

from __future__ import annotations

import importlib
import inspect
import re
import types
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

import dltrain
from dltrain._refusals import REFUSED
from dltrain.errors import ConfigurationError

REPO = Path(__file__).resolve().parents[2]

# The rename, module for module, and the classes that change name (docs/guides/from-lightning.md).
MODULES = {
    "lightning.pytorch": "dltrain",
    "lightning.pytorch.callbacks": "dltrain.callbacks",
    "lightning.pytorch.loggers": "dltrain.loggers",
    "lightning.pytorch.profilers": "dltrain.profilers",
    "lightning.pytorch.tuner": "dltrain.tuner",
}
CLASSES = {"LightningModule": "Task", "LightningDataModule": "DataModule", "LightningCLI": "CLI",
           "TQDMProgressBar": "ProgressBar"}

# Names another engineer is building right now (issue 22): each must still be missing (the test below fails once
# it exists, so that it leaves this set), and the set must reach zero.
PENDING: dict[str, str] = {}


# ---------------------------------------------------------------------------------------------------- enumeration
def _public_names(module: types.ModuleType) -> list[str]:
    """``__all__`` and the public attributes Lightning defines there but leaves out of it (``cli_lightning_logo``,
    which every example of Lightning's imports from ``lightning.pytorch``); not submodules, nor what the module
    imported from other packages."""
    listed = getattr(module, "__all__", None)
    names = set(listed or [])
    for name, value in vars(module).items():
        if name.startswith("_") or isinstance(value, types.ModuleType):
            continue
        defined_in = getattr(value, "__module__", None) if callable(value) else module.__name__
        if listed is None or (defined_in or "").startswith("lightning."):
            names.add(name)
    return sorted(names)


def test_the_enumeration_sees_public_names_left_out_of_all():
    import lightning.pytorch as pl

    names = _public_names(pl)
    assert {"cli_lightning_logo", "LIGHTNING_LOGO", "disable_possible_user_warnings", "Trainer"} <= set(names)
    assert "module_available" not in names and "os" not in names  # imported from elsewhere


def test_lightning_banner_and_warning_filter(capsys):
    from lightning.fabric.utilities.warnings import PossibleUserWarning

    dltrain.cli_lightning_logo()
    assert dltrain.LIGHTNING_LOGO in capsys.readouterr().out
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dltrain.disable_possible_user_warnings()
        warnings.warn("possibly wrong", PossibleUserWarning, stacklevel=1)
        warnings.warn("wrong", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["wrong"]


def _lightning_trainer() -> Any:
    import lightning.pytorch as pl

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                          enable_progress_bar=False, enable_model_summary=False)


def _dltrain_trainer() -> Any:
    return dltrain.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                           enable_progress_bar=False, enable_model_summary=False)


class _Task(dltrain.Task):
    pass


def _members(obj: Any, exclude: set[str]) -> set[str]:
    return {n for n in dir(obj) if not n.startswith("_") and n not in exclude}


def lightning_names() -> dict[str, tuple[Any, str]]:
    """Lightning's qualified name -> (the dltrain object that must have it, the name it has there)."""
    import lightning.pytorch as pl

    names: dict[str, tuple[Any, str]] = {}
    for lightning_module, ours in MODULES.items():
        for name in _public_names(importlib.import_module(lightning_module)):
            names[f"{lightning_module}.{name}"] = (ours, CLASSES.get(name, name))
    module_members = set(dir(torch.nn.Module))
    task = _Task()
    for name in _members(pl.LightningModule, module_members):
        names[f"lightning.pytorch.LightningModule.{name}"] = (task, name)
    trainer = _dltrain_trainer()
    for name in _members(_lightning_trainer(), set()):
        names[f"lightning.pytorch.Trainer.{name}"] = (trainer, name)
    datamodule = dltrain.DataModule()
    for name in _members(pl.LightningDataModule, set()):
        names[f"lightning.pytorch.LightningDataModule.{name}"] = (datamodule, name)
    # trainer.state's types: renamed with the module (lightning.pytorch.trainer.states -> dltrain)
    states = importlib.import_module("lightning.pytorch.trainer.states")
    for name, value in vars(states).items():
        if inspect.isclass(value) and value.__module__ == states.__name__:
            names[f"{states.__name__}.{name}"] = ("dltrain", name)
    return names


def _has(owner: Any, name: str) -> bool:
    if isinstance(owner, str):
        try:
            return hasattr(importlib.import_module(owner), name)
        except ModuleNotFoundError:  # the whole module is missing
            return False
    return name in dir(owner)  # without evaluating properties


# ---------------------------------------------------------------------------------------------------- names
def test_every_lightning_name_exists_in_dltrain_or_is_refused():
    names = lightning_names()
    assert len(names) > 150  # the enumeration found Lightning's API (sanity check of this test itself)
    missing = sorted(q for q, (owner, name) in names.items()
                     if not _has(owner, name) and q not in REFUSED and q not in PENDING)
    assert not missing, (f"{len(missing)} Lightning names are neither in dltrain nor refused in "
                         f"dltrain._refusals.REFUSED: {missing}")


def test_pending_names_are_still_missing():
    """A name in PENDING that now exists must leave it (PENDING shrinks to zero)."""
    names = lightning_names()
    done = sorted(q for q in PENDING if q in names and _has(*names[q]))
    assert not done, f"these exist now: remove them from PENDING: {done}"
    unknown = sorted(q for q in PENDING if q not in names and not q.endswith("=)"))
    assert not unknown, f"PENDING names Lightning does not have: {unknown}"


def test_refused_names_are_lightning_names_that_dltrain_lacks():
    names = lightning_names()
    for q in REFUSED:
        if q.startswith("lightning.pytorch."):
            assert q in names or q.endswith("=)"), f"{q} is refused but Lightning has no such name: drop it"


@pytest.mark.parametrize("qualified", sorted(q for q in REFUSED if q.startswith("lightning.pytorch.")
                                             and not q.endswith("=)")))
def test_a_refused_name_raises_its_reason_when_used(qualified):
    owner, name = lightning_names()[qualified]
    reason = REFUSED[qualified]
    with pytest.raises(ConfigurationError) as info:
        if isinstance(owner, str):
            getattr(importlib.import_module(owner), name)()
        else:
            value = getattr(owner, name)  # a property raises here
            value()  # a method raises when called
    assert reason in str(info.value) and qualified in str(info.value)


def test_renamed_classes_keep_their_lightning_name_as_an_alias():
    """``TQDMProgressBar`` is dltrain's ``ProgressBar``, under both names (the rename's one alias)."""
    import dltrain.callbacks

    assert dltrain.callbacks.TQDMProgressBar is dltrain.callbacks.ProgressBar


# ---------------------------------------------------------------------------------------------------- arguments
def _parameters(fn: Any) -> list[str] | None:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return None
    return [p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name not in ("self", "cls")]


def lightning_arguments() -> dict[str, bool]:
    """``Class(arg=)`` / ``Class.method(arg=)`` for every argument of Lightning's classes and methods whose dltrain
    counterpart exists -> whether dltrain's takes it."""
    import lightning.pytorch as pl

    pairs: list[tuple[str, Any, Any]] = []
    for lightning_module, ours in MODULES.items():
        module = importlib.import_module(lightning_module)
        for name in _public_names(module):
            try:
                mine = getattr(importlib.import_module(ours), CLASSES.get(name, name), None)
            except ModuleNotFoundError:
                mine = None
            theirs = getattr(module, name)
            if inspect.isclass(theirs) and inspect.isclass(mine) and f"{lightning_module}.{name}" not in REFUSED:
                pairs.append((f"{lightning_module}.{name}", theirs.__init__, mine.__init__))
    for cls, mine_cls, prefix in ((pl.LightningModule, _Task, "lightning.pytorch.LightningModule"),
                                  (pl.Trainer, dltrain.Trainer, "lightning.pytorch.Trainer")):
        for name in _members(cls, set(dir(torch.nn.Module))):
            theirs, mine = inspect.getattr_static(cls, name), inspect.getattr_static(mine_cls, name, None)
            if (callable(theirs) and callable(mine)) or isinstance(theirs, (classmethod, staticmethod)):
                pairs.append((f"{prefix}.{name}", getattr(cls, name), getattr(mine_cls, name, None)))
    out: dict[str, bool] = {}
    for qualified, theirs, mine in pairs:
        if qualified in REFUSED:  # a refused class or method: its arguments with it
            continue
        their_params, my_params = _parameters(theirs), _parameters(mine) if mine is not None else None
        if their_params is None or my_params is None:
            continue
        for arg in their_params:
            out[f"{qualified}({arg}=)"] = arg in my_params
    return out


def test_every_lightning_argument_exists_in_dltrain_or_is_refused():
    args = lightning_arguments()
    assert len(args) > 300
    missing = sorted(q for q, ok in args.items() if not ok and q not in REFUSED and q not in PENDING)
    assert not missing, f"{len(missing)} Lightning arguments are neither in dltrain nor refused: {missing}"
    done = sorted(q for q, ok in args.items() if ok and q in PENDING)
    assert not done, f"these arguments exist now: remove them from PENDING: {done}"


# ---------------------------------------------------------------------------------------------------- the README
def test_readme_shows_the_refusal_list():
    # The section moved from the README to the docs site's guide (docs/guides/from-lightning.md).
    section = (REPO / "docs" / "guides" / "from-lightning.md").read_text()
    rows = dict(re.findall(r"^\| `([^`]+)` \| (.+?) \|$", section, re.M))
    for name, reason in REFUSED.items():
        short = name.removeprefix("lightning.pytorch.")
        assert short in rows, f"docs/guides/from-lightning.md lacks the refused name {short}"
        assert rows[short] == reason, f"docs/guides/from-lightning.md's reason for {short} differs from dltrain._refusals.REFUSED"


def test_the_lightning_package_names_after_import_lightning_as_L():
    """``import lightning as L`` (Lightning's README) is renamed to ``import dltrain as L``: every name the
    ``lightning`` package exports for Trainer code exists in dltrain under its renamed name (``Fabric`` is
    Lightning's own: a Fabric script stays on Lightning)."""
    import lightning

    renamed = {"LightningModule": "Task", "LightningDataModule": "DataModule"}
    for name in lightning.__all__:
        if name in ("Fabric", "__version__"):
            continue
        assert hasattr(dltrain, renamed.get(name, name)), name
    assert isinstance(dltrain.__version__, str)
