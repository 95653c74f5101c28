"""The plugin registry: registration, third-party entry points, listing, errors, and lazy imports."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import dltrain.plugins as plugins
from dltrain.errors import ConfigurationError
from dltrain.plugins import Plugin, PluginDependencyError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _clean_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    # Every test sees (and leaves) the registry as it was.
    monkeypatch.setattr(plugins, "_registered", dict(plugins._registered))


def test_register_by_name_and_lazy_factory() -> None:
    mine = Plugin(name="mine", extra="mine")
    plugins.register("mine", mine)
    assert plugins.get("mine") is mine
    calls = []

    def build() -> Plugin:
        calls.append(1)
        return Plugin(name="lazy", extra="lazy")

    plugins.register("lazy", build)
    assert "lazy" in plugins.available() and not calls  # listing does not build it
    assert plugins.get("lazy") is plugins.get("lazy") and calls == [1]  # built once, then cached


def _install_fake_distribution(root: Path, module: str, body: str, entry: str) -> None:
    """A package and its dist-info on sys.path, as `pip install` would leave them."""
    (root / f"{module}.py").write_text(textwrap.dedent(body))
    info = root / f"{module.replace('_', '-')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[dltrain.plugins]\n{entry}\n")


def test_third_party_entry_point_is_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _install_fake_distribution(
        tmp_path,
        "thirdparty_geo",
        """
        from dltrain.plugins import Plugin
        plugin = Plugin(name="geo", extra="geo", decoders={"tif": bytes})
        """,
        "geo = thirdparty_geo:plugin",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "thirdparty_geo", raising=False)
    assert "geo" in plugins.available()
    geo = plugins.get("geo")
    assert geo.name == "geo" and set(geo.decoders) == {"tif"}


def test_entry_point_that_is_not_a_plugin_is_rejected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _install_fake_distribution(tmp_path, "thirdparty_bad", "plugin = object()\n", "bad = thirdparty_bad:plugin")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigurationError, match=r"not a dltrain\.plugins\.Plugin"):
        plugins.get("bad")


def test_available_lists_builtins() -> None:
    names = plugins.available()
    assert {"vision", "text", "audio"} <= set(names) and names == sorted(names)


def test_unknown_name_lists_the_available_plugins() -> None:
    with pytest.raises(ConfigurationError) as info:
        plugins.get("no-such-plugin")
    message = str(info.value)
    assert "no-such-plugin" in message and "vision" in message and "dltrain.plugins" in message


def test_require_names_the_extra() -> None:
    with pytest.raises(PluginDependencyError, match=r"pip install 'dltrain\[vision\]'") as info:
        plugins.require("surely_not_a_module_xyz", plugin="vision", extra="vision")
    assert isinstance(info.value, ImportError)


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120,
                          cwd=REPO, env={"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"})


def test_import_dltrain_imports_no_plugin_and_no_domain_library() -> None:
    # A finder first on sys.meta_path records who imports a forbidden module, so a failure names the culprit.
    result = _run(
        """
        import sys, traceback
        FORBIDDEN = ("torchvision", "tokenizers", "soundfile")
        culprits = []
        class Spy:
            def find_spec(self, name, path=None, target=None):
                if name in FORBIDDEN or name.startswith("dltrain.plugins."):
                    stack = [f"{f.filename}:{f.lineno}" for f in traceback.extract_stack()
                             if "importlib" not in f.filename][-12:]
                    culprits.append(f"{name} <- " + " <- ".join(reversed(stack)))
                return None
        sys.meta_path.insert(0, Spy())
        import dltrain, dltrain.plugins
        dltrain.plugins.available()
        loaded = sorted(m for m in sys.modules
                        if m.startswith("dltrain.plugins.") or m.split(".")[0] in FORBIDDEN)
        print("LOADED", loaded[:5])
        print("\\n".join(culprits[:3]))
        """
    )
    assert result.returncode == 0, result.stderr
    assert "LOADED []" in result.stdout, f"import dltrain imported plugin modules or their libraries:\n{result.stdout}"


def test_missing_optional_dependency_says_which_extra_to_install() -> None:
    # Unload torchvision and make `import torchvision` fail (sys.modules[name] = None), as if it were not installed.
    # Core libraries that import it when present (torchmetrics) are imported first, as they would be without it.
    result = _run(
        """
        import sys
        import dltrain, dltrain.plugins, torchmetrics
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        sys.modules["torchvision"] = None
        try:
            dltrain.plugins.get("vision")
        except dltrain.plugins.PluginDependencyError as err:
            print("ERROR", err)
        """
    )
    assert result.returncode == 0, result.stderr
    assert "ERROR" in result.stdout and "torchvision" in result.stdout
    assert "pip install 'dltrain[vision]'" in result.stdout


def test_streaming_dataset_takes_a_plugin_by_name(tmp_path: Path) -> None:
    # Issue 28, item 2: `plugin="name"` is resolved through the registry (before: AttributeError on 'str').
    from tests.helpers.shards import make_shards

    from dltrain.data import StreamingDataset

    seen: list[str] = []

    def transform(stage: str, **options: object):
        seen.append(stage)
        return lambda sample: sample["json"]["i"]

    plugins.register("mine", Plugin(name="mine", extra="mine", transform=transform, collate=sorted))
    shards = make_shards(tmp_path, num_shards=2, min_size=3, max_size=3)
    ds = StreamingDataset(shards.pattern, batch_size=6, plugin="mine", stage="val")
    assert seen == ["val"] and list(ds) == [[0, 1, 2, 3, 4, 5]]
    with pytest.raises(ConfigurationError) as info:
        StreamingDataset(shards.pattern, batch_size=6, plugin="no-such-plugin", stage="val")
    message = str(info.value)
    assert "no-such-plugin" in message and "mine" in message and "vision" in message
    assert "'dltrain.plugins'" in message  # the entry-point group


def test_core_resolves_plugin_names_lazily() -> None:
    # `import dltrain.data` (the core) does not import the registry, let alone a plugin.
    result = _run(
        """
        import sys
        import dltrain, dltrain.data
        print("LOADED", sorted(m for m in sys.modules if m.startswith("dltrain.plugins")))
        """
    )
    assert result.returncode == 0, result.stderr
    assert "LOADED []" in result.stdout, result.stdout
