"""The import contract of docs/DESIGN.md ("Layers"), and no other library's private API outside ``_compat.py``.

Both read the source (AST), import nothing, and count every import: at module level, inside functions and under
``if TYPE_CHECKING:`` alike (a type-checking import still ties the modules together). The rules checked here are
exactly the ones DESIGN.md states; a failure names the file, the line and the rule.
"""

from __future__ import annotations

import ast
import fnmatch
import re
from dataclasses import dataclass
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PACKAGE = SRC / "dltrain"


@dataclass(frozen=True)
class Import:
    importer: str  # dotted module name of the file
    imported: str  # dotted name of what it imports (a module, or a module's member)
    file: Path
    line: int


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> list[Import]:
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[Import] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [Import(name, alias.name, path, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolved against this module's package
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            # `from dltrain import loop` imports the module dltrain.loop; `from x import y` may name a member.
            found += [Import(name, f"{module}.{alias.name}", path, node.lineno) for alias in node.names]
    return found


def _all_imports() -> list[Import]:
    return [imp for path in sorted(PACKAGE.rglob("*.py")) for imp in _imports(path)]


def _is(name: str, module: str) -> bool:
    """``name`` is ``module`` or something inside it."""
    return name == module or name.startswith(module + ".")


# ------------------------------------------------------------------------------------------- the layers
PLUGINS = "dltrain.plugins"
SHARED_PLUGIN_MODULES = ("dltrain.plugins.metrics",)  # the metric factories every domain shares
LOOPS = ("dltrain.loop", "dltrain.evaluation", "dltrain.batch_path", "dltrain._checkpointing")
PARTS = ("dltrain._settings", "dltrain._engine", "dltrain._hooks", "dltrain._run_state")
ABOVE_PARTS = ("dltrain.trainer", *LOOPS)
ABOVE_CALLBACKS = ("dltrain.trainer", *LOOPS, *PARTS)
VIEW_TYPES = ("dltrain._run_state.LoopState",)  # what the view's members are made of (``loop_state``)


def _plugin_packages() -> set[str]:
    """The modules under dltrain/plugins/ other than the registry (its ``__init__``): the plugins, and the shared
    metric factories."""
    folder = PACKAGE / "plugins"
    return {p.stem for p in folder.iterdir() if (p.is_dir() and (p / "__init__.py").exists())
            or (p.suffix == ".py" and p.name != "__init__.py")}


def _plugin_of(module: str) -> str | None:
    """The plugin a module belongs to (``dltrain.plugins.vision``); None for the registry and the rest."""
    parts = module.split(".")
    if len(parts) >= 3 and parts[:2] == ["dltrain", "plugins"] and parts[2] in _plugin_packages():
        return ".".join(parts[:3])
    return None


def _violations(rule: str, bad: list[Import]) -> str:
    return f"{rule}:\n" + "\n".join(f"  {i.file.relative_to(ROOT)}:{i.line}: {i.importer} imports {i.imported}"
                                     for i in bad)


def test_the_core_never_imports_a_plugin():
    """Plugins depend on the core, never the reverse (the registry ``dltrain.plugins`` is core)."""
    bad = [i for i in _all_imports()
           if not _is(i.importer, PLUGINS) and _plugin_of(i.imported) is not None]
    assert not bad, _violations("the core imports a plugin", bad)


def test_plugins_never_import_each_other():
    bad = [i for i in _all_imports()
           if (mine := _plugin_of(i.importer)) is not None and (theirs := _plugin_of(i.imported)) is not None
           and theirs != mine and theirs not in SHARED_PLUGIN_MODULES]
    assert not bad, _violations("a plugin imports another plugin", bad)


def test_the_loops_never_import_the_trainer():
    """The loops take the run's parts (settings, engine, hook dispatcher, run state), not the Trainer."""
    bad = [i for i in _all_imports()
           if any(_is(i.importer, m) for m in LOOPS) and _is(i.imported, "dltrain.trainer")]
    assert not bad, _violations("a loop imports the Trainer", bad)


def test_the_parts_never_import_the_loops_or_the_trainer():
    bad = [i for i in _all_imports()
           if any(_is(i.importer, m) for m in PARTS) and any(_is(i.imported, m) for m in ABOVE_PARTS)]
    assert not bad, _violations("a part (settings, engine, hooks, run state) imports a loop or the Trainer", bad)


def test_callbacks_see_only_the_view():
    """Callbacks are typed against `dltrain.callbacks.TrainerView`: no import of the Trainer, the loops or the
    parts behind the view."""
    bad = [i for i in _all_imports()
           if _is(i.importer, "dltrain.callbacks") and any(_is(i.imported, m) for m in ABOVE_CALLBACKS)
           and i.imported not in VIEW_TYPES]
    assert not bad, _violations("a callback imports what is behind the trainer view", bad)


def test_the_contract_sees_the_modules_it_names():
    """A renamed module would make the rules above pass vacuously."""
    modules = {_module_name(p) for p in PACKAGE.rglob("*.py")}
    named = {PLUGINS, *SHARED_PLUGIN_MODULES, *LOOPS, *PARTS, "dltrain.trainer", "dltrain.callbacks"}
    assert named <= modules, sorted(named - modules)
    imports = _all_imports()
    assert any(_is(i.importer, "dltrain.callbacks") for i in imports)
    assert any(i.importer == "dltrain.trainer" and _is(i.imported, "dltrain.loop") for i in imports)


def test_the_checker_catches_each_kind_of_import(tmp_path):
    """The scanner itself: relative, TYPE_CHECKING and function-level imports are all seen."""
    pkg = tmp_path / "src" / "dltrain" / "callbacks"
    pkg.mkdir(parents=True)
    (pkg / "x.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "from ..loop import FitLoop\n"
        "if TYPE_CHECKING:\n    from dltrain.trainer import Trainer\n"
        "def f():\n    import dltrain._engine\n"
    )
    global SRC
    saved, SRC = SRC, tmp_path / "src"
    try:
        found = {i.imported for i in _imports(pkg / "x.py")}
    finally:
        SRC = saved
    assert {"dltrain.loop.FitLoop", "dltrain.trainer.Trainer", "dltrain._engine"} <= found


# ------------------------------------------------------------------------------------------- private APIs
COMPAT = PACKAGE / "_compat.py"
_PRIVATE = re.compile(r"^_[^_]|^_$")  # _name, not __dunder__
_NOQA_SLF = re.compile(r"#\s*noqa:[^#]*\bSLF001\b(?P<reason>.*)$")


def _exempt_paths() -> list[str]:
    """``_compat.py`` and the paths pyproject's ruff config exempts from SLF001 for now (a temporary
    per-file-ignore; removing it there makes this test cover them too)."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    ignores = config["tool"]["ruff"]["lint"].get("per-file-ignores", {})
    return ["src/dltrain/_compat.py", *(glob for glob, rules in ignores.items()
                                        if glob.startswith("src/") and "SLF001" in rules)]


def _checked_files() -> list[Path]:
    exempt = _exempt_paths()
    return [p for p in sorted(PACKAGE.rglob("*.py"))
            if not any(fnmatch.fnmatch(str(p.relative_to(ROOT)), glob) for glob in exempt)]


def _own_names(tree: ast.AST) -> set[str]:
    """Private names a module defines itself: attributes it assigns (``x._a = ...``, ``self._a: T``), functions,
    classes and class-level names."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
            targets = [node.target]
        for target in targets:
            if isinstance(target, ast.Attribute):
                names.add(target.attr)
            elif isinstance(target, ast.Name):
                names.add(target.id)
    return {n for n in names if _PRIVATE.match(n)}


def _foreign_private_uses(path: Path) -> list[str]:
    source = path.read_text()
    tree = ast.parse(source, str(path))
    lines = source.splitlines()
    own = _own_names(tree)
    where = str(path.relative_to(ROOT))
    found: list[str] = []
    for node in ast.walk(tree):
        # A private module or a private member of another library, imported.
        if isinstance(node, ast.Import):
            for alias in node.names:
                if not _is(alias.name, "dltrain") and any(_PRIVATE.match(p) for p in alias.name.split(".")):
                    found.append(f"{where}:{node.lineno}: import {alias.name}")
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module not in (None, "__future__"):
            module = node.module or ""
            if _is(module, "dltrain"):
                continue
            if any(_PRIVATE.match(p) for p in module.split(".")):
                found.append(f"{where}:{node.lineno}: from {module} import ...")
            found += [f"{where}:{node.lineno}: from {module} import {a.name}" for a in node.names
                      if _PRIVATE.match(a.name)]
        # getattr(obj, "_name", ...) and friends: a private attribute by its name.
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id in ("getattr", "hasattr", "setattr", "delattr") and len(node.args) >= 2
              and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)
              and _PRIVATE.match(node.args[1].value) and node.args[1].value not in own):
            found.append(f"{where}:{node.lineno}: {node.func.id}(..., {node.args[1].value!r})")
        # obj._name on a line whose SLF001 finding is waived: only for names this module defines itself.
        elif (isinstance(node, ast.Attribute) and _PRIVATE.match(node.attr)
              and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))):
            waiver = _NOQA_SLF.search(lines[node.lineno - 1])
            if waiver is not None and node.attr not in own:
                found.append(f"{where}:{node.lineno}: .{node.attr} (SLF001 waived, but the name is not this "
                             "module's own)")
            if waiver is not None and not waiver.group("reason").strip(" #-:"):
                found.append(f"{where}:{node.lineno}: '# noqa: SLF001' without a reason")
    return found


def test_no_private_api_of_another_library_outside_compat():
    """Every private API of another library goes through ``dltrain._compat`` (docs/DESIGN.md). Private member
    access in general is ruff's SLF001 (on in pyproject for src/); this adds what SLF001 does not see: private
    modules and names imported, ``getattr(x, "_name")``, and waived SLF001 lines that reach a name the module
    does not define."""
    found = [use for path in _checked_files() for use in _foreign_private_uses(path)]
    assert not found, "another library's private API outside dltrain/_compat.py:\n  " + "\n  ".join(found)


def test_the_private_api_check_catches_each_kind(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import torch.distributed._tools\n"
        "from torch.nn.modules.batchnorm import _BatchNorm\n"
        "from torch._dynamo import eval_frame\n"
        "def f(strategy, m):\n"
        "    a = getattr(strategy, '_timeout', None)\n"
        "    return m._parameters  # noqa: SLF001  a reason\n"
        "def g(x):\n"
        "    return x._mine  # noqa: SLF001\n"
        "class C:\n    def __init__(self):\n        self._mine = 1\n"
    )
    global ROOT
    saved, ROOT = ROOT, tmp_path
    try:
        found = _foreign_private_uses(bad)
    finally:
        ROOT = saved
    text = "\n".join(found)
    for expected in ("import torch.distributed._tools", "import _BatchNorm", "from torch._dynamo",
                     "'_timeout'", "._parameters", "without a reason"):
        assert expected in text, (expected, found)
    assert "._mine (SLF001 waived" not in text  # the module's own name, waived with... no reason (reported above)
    assert _exempt_paths()[0] == "src/dltrain/_compat.py" and COMPAT.exists()


# ------------------------------------------------------------------------------------------- the trainer view
def test_the_trainer_and_the_test_fake_have_every_member_of_the_view():
    """At run time too (mypy checks the types): the Trainer and tests/helpers/fake_trainer.py's FakeTrainer have
    every member of `dltrain.callbacks.TrainerView`, and the view lists what DESIGN.md's table lists."""
    import dltrain
    from dltrain.callbacks import TrainerView
    from tests.helpers.fake_trainer import FakeTrainer, view_members

    members = view_members()
    trainer = dltrain.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                              enable_model_summary=False)
    assert trainer.estimated_stepping_batches == float("inf")  # no loader yet: unknown (was an OverflowError)
    assert not [m for m in members if not hasattr(trainer, m)]
    assert not [m for m in members if not hasattr(FakeTrainer(), m)]
    assert isinstance(trainer, TrainerView) and isinstance(FakeTrainer(), TrainerView)
    table = (ROOT / "docs" / "DESIGN.md").read_text().split("## The trainer view", 1)[1].split("\n## ", 1)[0]
    documented = {name for cell in re.findall(r"^\| (.+?) \|", table, re.M) for name in re.findall(r"`(\w+)", cell)}
    assert members <= documented, f"view members missing from DESIGN.md's table: {sorted(members - documented)}"


def test_every_callback_hook_takes_the_view():
    """Each hook of `Callback` and of every built-in callback is typed with `TrainerView`, not the Trainer."""
    import inspect

    import dltrain.callbacks as callbacks
    from dltrain.callbacks.base import HOOKS, Callback

    classes = [c for c in vars(callbacks).values() if isinstance(c, type) and issubclass(c, Callback)]
    assert len(classes) > 10
    wrong = []
    for cls in classes:
        for hook in HOOKS:
            if hook not in vars(cls):
                continue
            params = list(inspect.signature(vars(cls)[hook]).parameters.values())
            if len(params) > 1 and str(params[1].annotation) != "TrainerView":
                wrong.append(f"{cls.__name__}.{hook}: {params[1].annotation}")
    assert not wrong, wrong


def test_one_helper_says_whether_a_class_overrides_a_hook():
    """``dltrain._hooks.overrides`` is the one "does this class override that method" test; a second copy (the
    five there were before it) would drift from it."""
    pattern = re.compile(r"getattr\(\s*type\([^)]*\)[^)]*\)\s+is\s+(not\s+)?getattr\(|"
                         r"\bis\s+(not\s+)?getattr\(\s*(Task|Callback|DataModule)\b")
    copies = [f"{p.relative_to(ROOT)}:{i}" for p in sorted(PACKAGE.rglob("*.py")) if p.name != "_hooks.py"
              for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert not copies, copies
    assert pattern.search("return getattr(type(task), name) is not getattr(Task, name)")
