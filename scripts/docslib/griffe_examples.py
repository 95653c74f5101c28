"""A griffe extension for the site: an ``Example:`` section of a docstring is read as ``Examples:``.

Google style (and napoleon) accept both spellings; griffe reads ``Example:`` as a note whose ``>>>`` lines would be
rendered as Markdown text (``>`` starts a quote, ``[x](y)`` a link) instead of as code. Rewriting the title when
the docstrings are loaded keeps the sources as they are.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_TITLE = re.compile(r"^(\s*)Example:[ \t]*$", re.M)


class ExamplesSection(griffe.Extension):
    """Renames the ``Example:`` section of every docstring to ``Examples:``."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _TITLE.sub(r"\1Examples:", obj.docstring.value)
