"""Dependency floors exclude known-compromised and vulnerable releases (issue 28, item 7).

Each advisory below names the releases it covers; the test fails when pyproject.toml admits one of them, when the
requirement carries no comment naming the advisory, or when the security page (docs/explanation/security.md) does
not name it. The installed environment must satisfy the floors too (scripts/test installs from pyproject.toml).
"""

from __future__ import annotations

import re
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
from packaging.requirements import Requirement

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]
# What dltrain loads and how, and the advisories the floors exclude (linked from the README).
SECURITY = ROOT / "docs" / "explanation" / "security.md"

# advisory -> (package, releases it covers: a specifier, and examples that must be excluded)
ADVISORIES = {
    "GHSA-w37p-236h-pfx3": ("lightning", ["2.6.2", "2.6.3"]),  # compromised on PyPI: credential stealer
    "GHSA-qqmf-gpg7-g8gw": ("lightning", ["2.6.0", "2.6.1", "2.6.4", "2.6.5"]),  # code from checkpoint hparams
    "CVE-2026-24747": ("torch", ["2.6.0", "2.8.0", "2.9.1"]),  # weights_only unpickler memory corruption
    "CVE-2024-34062": ("tqdm", ["4.66.0", "4.66.2"]),  # eval of CLI arguments
    "PYSEC-2026-2253": ("pillow", ["10.4.0", "11.3.0", "12.2.0"]),  # image decoders (fixed in 12.3.0)
    "CVE-2024-5206": ("scikit-learn", ["1.4.2"]),  # TfidfVectorizer keeps leaked tokens (examples extra)
    "CVE-2025-47273": ("setuptools", ["77.0.3", "78.1.0"]),  # path traversal (build requirement)
}


def _requirements() -> dict[str, list[tuple[Requirement, str]]]:
    """package -> [(requirement, its line with the comment)] over dependencies, extras and build requirements."""
    text = (ROOT / "pyproject.toml").read_text()
    data = tomllib.loads(text)
    specs = [*data["build-system"]["requires"], *data["project"]["dependencies"]]
    for extra in data["project"]["optional-dependencies"].values():
        specs += [s for s in extra if not s.startswith("dltrain[")]
    lines = text.splitlines()
    found: dict[str, list[tuple[Requirement, str]]] = {}
    for spec in specs:
        req = Requirement(spec)
        # The line that holds it, and the comment lines just above it.
        i = next(n for n, line in enumerate(lines) if f'"{spec}"' in line)
        start = i
        while start > 0 and lines[start - 1].lstrip().startswith("#"):
            start -= 1
        found.setdefault(req.name.lower(), []).append((req, "\n".join(lines[start : i + 1])))
    return found


@pytest.mark.parametrize("advisory", sorted(ADVISORIES))
def test_floors_exclude_the_advisory_releases_and_say_why(advisory):
    package, bad = ADVISORIES[advisory]
    requirements = _requirements().get(package)
    assert requirements, f"{package} is not a requirement any more: drop {advisory} from this test"
    for req, context in requirements:
        admitted = [v for v in bad if req.specifier.contains(v, prereleases=True)]
        assert not admitted, f"{req} admits {admitted}, covered by {advisory}"
        assert advisory in context, f"no comment naming {advisory} next to {req}:\n{context}"
    assert advisory in SECURITY.read_text(), f"{SECURITY.relative_to(ROOT)} does not name {advisory}"


def test_installed_versions_satisfy_the_floors():
    for package, requirements in _requirements().items():
        try:
            installed = version(package)
        except PackageNotFoundError:
            continue  # an extra that is not installed here
        for req, _ in requirements:
            assert req.specifier.contains(installed, prereleases=True), f"{package} {installed} is not {req}"


def test_security_section_says_what_is_loaded_safely():
    security = SECURITY.read_text()
    for needed in ("weights_only=True", "unsafe_decoders", "pickle"):
        assert needed in security, needed
    assert re.search(r"lightning.{0,40}2\.6\.6", security)
