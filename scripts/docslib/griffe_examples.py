"""griffe extensions for the site: ``Example:`` sections read as ``Examples:``; the Trainer's settings as attributes.

``ExamplesSection``: Google style (and napoleon) accept both spellings; griffe reads ``Example:`` as a note whose
``>>>`` lines would be rendered as Markdown text (``>`` starts a quote, ``[x](y)`` a link) instead of as code.
Rewriting the title when the docstrings are loaded keeps the sources as they are. ``TrainerSettings``: below.
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


class TrainerSettings(griffe.Extension):
    """Shows the Trainer's settings as the plain attributes users read and assign.

    ``Trainer.max_epochs`` and its siblings are descriptors (``max_epochs: _Setting[int | None] = _Setting()``) that
    read the run's frozen settings; the reference would print that private type and value. The page shows
    ``max_epochs: int | None`` instead, with a line saying what it is.
    """

    def on_attribute_instance(self, *, attr: griffe.Attribute, **kwargs: Any) -> None:
        annotation = attr.annotation
        if isinstance(annotation, griffe.ExprSubscript) and str(annotation.left) == "_Setting":
            attr.annotation = annotation.slice
            attr.value = None
            if attr.docstring is None:
                attr.docstring = griffe.Docstring(
                    f"The Trainer argument ``{attr.name}`` of this run. Assigning it checks the new value as the "
                    "argument is checked; a running fit reads it from its next batch.",
                    parent=attr,
                )
