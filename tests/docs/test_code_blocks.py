"""Every Python code block of the README, BENCHMARKS.md, CONTRIBUTING.md, CHANGELOG.md and the site (docs/**/*.md) runs.

A page's blocks run in order in one namespace (a guide builds on its earlier blocks), in a fresh temporary folder,
in this process (as ``__main__``), with line numbers of the Markdown file in tracebacks. A block that cannot run
here starts with a comment line ``# not run: <why>`` (e.g. it needs 4 processes under torchrun), which
`test_every_block_runs_or_says_why` checks. Blocks in other languages (bash, text, toml) are not run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
NOT_RUN = re.compile(r"#\s*not run:\s*(.*)")
_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>```+|~~~+)[ \t]*(?P<info>[^\n`]*)$")


@dataclass
class Block:
    path: Path
    line: int  # 1-based line of the block's first code line
    info: str
    code: str

    @property
    def is_python(self) -> bool:
        return self.info.split(" ", 1)[0].lower() in ("python", "py", "python3")

    @property
    def not_run_reason(self) -> str | None:
        first = next((line.strip() for line in self.code.splitlines() if line.strip()), "")
        found = NOT_RUN.match(first)
        return found.group(1).strip() if found else None


def blocks(path: Path) -> list[Block]:
    """The fenced code blocks of a Markdown file (indented fences too: blocks inside lists and admonitions)."""
    found, lines = [], path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        indent, fence = opening.group("indent"), opening.group("fence")
        end = i + 1
        while end < len(lines) and not re.match(rf"^{re.escape(indent)}{re.escape(fence)}\s*$", lines[end]):
            end += 1
        code = "\n".join(line[len(indent):] for line in lines[i + 1:end])
        found.append(Block(path, i + 2, opening.group("info").strip(), code + "\n"))
        i = end + 1
    return found


def pages() -> list[Path]:
    """The Markdown files whose code must run: the repository's front files and every page of the site."""
    return [REPO / "README.md", REPO / "BENCHMARKS.md", REPO / "CONTRIBUTING.md", REPO / "CHANGELOG.md",
            *sorted((REPO / "docs").rglob("*.md"))]


def _runnable_pages() -> list[Path]:
    return [p for p in pages() if any(b.is_python and b.not_run_reason is None for b in blocks(p))]


def run_page(path: Path, folder: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """Run a page's Python blocks in order in ``folder``; returns the namespace they ran in."""
    monkeypatch.chdir(folder)
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    namespace: dict = {"__name__": "__main__"}
    for block in blocks(path):
        if block.is_python and block.not_run_reason is None:
            # Padded so that a traceback names the line of the Markdown file.
            source = "\n" * (block.line - 1) + block.code
            exec(compile(source, str(path), "exec"), namespace)
    return namespace


@pytest.mark.parametrize("path", _runnable_pages(), ids=lambda p: str(p.relative_to(REPO)))
def test_page_runs(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    run_page(path, tmp_path, monkeypatch)
    if path.name == "README.md":
        # The README's example trains for real: it must learn, and put its checkpoints with its run.
        out = capsys.readouterr().out
        loss = float(re.search(r"'val/loss': ([0-9.e-]+)", out).group(1))
        assert loss < 0.5, out
        assert (tmp_path / "runs" / "readme" / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt").exists()


def test_the_readme_example_is_one_screen() -> None:
    first = next(b for b in blocks(REPO / "README.md") if b.is_python)
    assert 20 <= len(first.code.splitlines()) <= 45


def test_every_block_runs_or_says_why() -> None:
    """A Python block is run, or starts with '# not run: <why>' (a reason of a few words at least)."""
    bad, run = [], 0
    for path in pages():
        for block in blocks(path):
            if not block.is_python:
                continue
            reason = block.not_run_reason
            if reason is None:
                run += 1
            elif len(reason.split()) < 3:
                bad.append(f"{path.relative_to(REPO)}:{block.line}: '# not run:' needs a reason ({reason!r})")
    assert not bad, "\n".join(bad)
    assert run >= 15, f"only {run} Python blocks run: is the collection broken?"


def test_fences_are_found_inside_lists_and_admonitions(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text('text\n\n```python\nx = 1\n```\n\n- item\n\n    ```py\n    y = 2\n    ```\n\n'
                    '??? note\n    ```bash\n    ls\n    ```\n\n```python\n# not run: needs 4 GPUs here\nz = 3\n```\n')
    found = blocks(page)
    assert [(b.info, b.code, b.line) for b in found] == [
        ("python", "x = 1\n", 4), ("py", "y = 2\n", 10), ("bash", "ls\n", 15),
        ("python", "# not run: needs 4 GPUs here\nz = 3\n", 19)]
    assert [b.is_python for b in found] == [True, True, False, True]
    assert found[3].not_run_reason == "needs 4 GPUs here"
