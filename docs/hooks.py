"""mkdocs hook: the docstrings' doctest examples (``>>>`` lines and their output) render as Python console blocks.

The package's docstrings carry their examples as bare doctests, outside a Google-style ``Examples:`` section (they
run as tests that way, see tests/docs/test_docs.py); Markdown would otherwise read ``>>>`` as nested quotes.
"""

from __future__ import annotations

import re

from markdown import Extension, Markdown
from markdown.preprocessors import Preprocessor
from mkdocs.plugins import event_priority

# What a reader should not see: the directives that only steer doctest.
DOCTEST_DIRECTIVE = re.compile(r"\s*#\s*doctest:.*$")


class DoctestBlocks(Preprocessor):
    """Wraps each run of doctest lines (from a ``>>>`` line to the next blank line) in a ``pycon`` fence."""

    def run(self, lines: list[str]) -> list[str]:
        out: list[str] = []
        example: list[str] = []
        in_fence = False
        for line in lines:
            if example and line.strip():
                example.append(DOCTEST_DIRECTIVE.sub("", line))
                continue
            if example:
                out += ["", "```pycon", *example, "```"]
                example = []
            if line.lstrip().startswith("```"):
                in_fence = not in_fence
            if not in_fence and line.startswith(">>>"):
                example.append(DOCTEST_DIRECTIVE.sub("", line))
            else:
                out.append(line)
        if example:
            out += ["", "```pycon", *example, "```"]
        return out


class DoctestExtension(Extension):
    def extendMarkdown(self, md: Markdown) -> None:  # noqa: N802 - Python-Markdown's name
        # Before the fenced-code preprocessors (priority 25 and below) so that they render the fences made here.
        md.preprocessors.register(DoctestBlocks(md), "doctest_blocks", 40)


@event_priority(100)  # before mkdocstrings builds its Markdown from the same extension list
def on_config(config):
    config.markdown_extensions.append(DoctestExtension())
    return config
