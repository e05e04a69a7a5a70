"""Literal text in report.md: every string the user controls (names, paths, parameters, errors, findings) enters
the markdown through ``text`` or ``code``, so it reads as written and never becomes markup or HTML."""

from __future__ import annotations

import re

# The punctuation that starts inline markup mid-line (a value never starts a line of report.md), and '|' that
# ends a table cell.
_PUNCTUATION = re.compile(r"([\\`*_\[\]|])")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


def _one_line(value) -> str:
    return _CONTROL.sub(" ", str(value))


def text(value) -> str:
    """``value`` as literal markdown prose (or a table cell): HTML's ``& < >`` as entities, markdown's
    punctuation backslash-escaped, control characters (a newline) as one space."""
    s = _one_line(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _PUNCTUATION.sub(r"\\\1", s)


def code(value) -> str:
    """``value`` as one markdown code span, whatever backticks it holds: the fence is one backtick longer
    than its longest run, and spaces keep a backtick at either end off the fence (a span's content is shown
    verbatim and HTML-escaped by the Markdown converter)."""
    s = _one_line(value)
    fence = "`" * (max((len(run) for run in re.findall(r"`+", s)), default=0) + 1)
    pad = " " if s.startswith("`") or s.endswith("`") else ""
    return f"{fence}{pad}{s}{pad}{fence}"
