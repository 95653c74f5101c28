"""Real English text that ships with CPython, for the NLP examples (no download needed).

- ``pydoc_data.topics.topics``: the reference-manual topics behind ``help("if")`` (~460 KB of English).
- The standard library's docstrings (modules, classes, functions), read with ``ast`` (nothing is imported or
  executed), ~1.7 MB on CPython 3.11.

Both examples split by *document* with a stable hash, so the same document never lands in train and val.
"""

from __future__ import annotations

import ast
import hashlib
import math
import os
import sysconfig
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

# Folders of the stdlib that hold tests, vendored packages or demos, not library documentation.
_SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "__pycache__", "turtledemo", "lib2to3/tests"}


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def iter_stdlib_files() -> Iterator[tuple[str, Path]]:
    """``(relative module path, file)`` of every stdlib ``.py`` file outside tests, sorted."""
    root = stdlib_dir()
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
        for name in filenames:
            if name.endswith(".py"):
                path = Path(dirpath) / name
                found.append((path.relative_to(root).as_posix(), path))
    return iter(sorted(found))


def docstrings(path: Path, min_chars: int = 40) -> list[str]:
    """Docstrings of the module, its classes and functions (files that do not parse give none)."""
    try:
        tree = ast.parse(path.read_bytes())
    except (SyntaxError, ValueError):
        return []
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            doc = ast.get_docstring(node)
            if doc and len(doc) >= min_chars:
                out.append(doc)
    return out


def lm_documents() -> list[tuple[str, str]]:
    """``(document id, text)``: every reference-manual topic, and each stdlib module's docstrings joined."""
    from pydoc_data.topics import topics

    docs = [(f"topic:{name}", text) for name, text in sorted(topics.items())]
    for rel, path in iter_stdlib_files():
        parts = docstrings(path)
        if parts:
            docs.append((f"module:{rel}", "\n\n".join(parts)))
    return docs


def is_val(doc_id: str, val_fraction: float, seed: int = 0) -> bool:
    """Stable train/val assignment of a document (independent of the Python hash seed)."""
    h = int.from_bytes(hashlib.sha256(f"{seed}:{doc_id}".encode()).digest()[:8], "big")
    return (h % 10_000) < val_fraction * 10_000


def unigram_byte_bpb(train_texts: Iterable[str], val_texts: Iterable[str]) -> float:
    """Bits per byte of a unigram byte model (add-one smoothing) fitted on train, on val.

    The model also predicts the end of each document (a 257th symbol), as the language model predicts EOD;
    both are divided by the same number of UTF-8 bytes, so the two numbers compare directly.
    """
    counts: Counter[int] = Counter()
    n_docs = 0
    for text in train_texts:
        counts.update(text.encode("utf-8"))
        n_docs += 1
    total = sum(counts.values()) + n_docs + 257
    log_p = {b: math.log2((counts[b] + 1) / total) for b in range(256)}
    log_eod = math.log2((n_docs + 1) / total)
    bits = 0.0
    n_bytes = 0
    for text in val_texts:
        data = text.encode("utf-8")
        c = Counter(data)
        bits -= sum(n * log_p[b] for b, n in c.items()) + log_eod
        n_bytes += len(data)
    return bits / max(n_bytes, 1)


# Stdlib packages whose docstrings form the classes of the classification example. Chosen among packages
# present in every CPython >= 3.10 build (tkinter and idlelib are often missing from slim builds).
CLASSIFICATION_PACKAGES = ("asyncio", "email", "importlib", "logging", "xml", "multiprocessing", "unittest",
                           "http", "urllib", "concurrent", "json", "collections")


def classification_examples(min_per_class: int = 30) -> tuple[list[tuple[str, str, int]], list[str]]:
    """``([(source file, docstring, label)], class names)``: stdlib docstrings labelled by their package."""
    by_pkg: dict[str, list[tuple[str, str]]] = {p: [] for p in CLASSIFICATION_PACKAGES}
    for rel, path in iter_stdlib_files():
        top = rel.split("/", 1)[0]
        if top in by_pkg and "/" in rel:
            by_pkg[top].extend((rel, d) for d in docstrings(path))
    names = [p for p in CLASSIFICATION_PACKAGES if len(by_pkg[p]) >= min_per_class]
    examples = [(rel, doc, names.index(p)) for p in names for rel, doc in by_pkg[p]]
    return examples, names


def split_by_file(examples: list[tuple[str, str, int]], val_fraction: float, seed: int = 0
                  ) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """Stratified train/val split that keeps each source file on one side.

    Per label, files are taken in a stable hashed order into val until it holds ``val_fraction`` of that label's
    docstrings (at least one file always stays in train), so every class is in both splits when it spans two or
    more files, and no file's docstrings leak across the split.
    """
    files: dict[int, dict[str, list[str]]] = {}
    for rel, doc, label in examples:
        files.setdefault(label, {}).setdefault(rel, []).append(doc)
    train: list[tuple[str, int]] = []
    val: list[tuple[str, int]] = []
    for _label, by_file in sorted(files.items()):
        total = sum(map(len, by_file.values()))
        order = sorted(by_file, key=lambda r: hashlib.sha256(f"{seed}:{r}".encode()).hexdigest())
        n_val = 0
        for i, rel in enumerate(order):
            # Skip files that would overshoot the target by half (one big file must not empty the train side).
            take = i < len(order) - 1 and n_val + len(by_file[rel]) <= 1.5 * val_fraction * total
            (val if take else train).extend((d, _label) for d in by_file[rel])
            n_val += len(by_file[rel]) if take else 0
    return train, val
