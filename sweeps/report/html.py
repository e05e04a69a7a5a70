"""``report.html``: report.md as one self-contained page (every image it links inline), readable on a phone.

Python-Markdown converts report.md (with its ``tables`` extension), so the page says exactly what the
markdown says; a tree processor then replaces each local image's address with a ``data:`` URI, whatever
image report.md links, so the one file can be mailed, attached or opened from a bucket without the folder.

The page runs nothing: raw HTML in report.md is shown as text (Python-Markdown's ``html_block`` preprocessor
and ``html`` inline pattern are removed) and a link or image address with a scheme other than http(s) or
``data:`` (``javascript:``) is dropped, whatever report.md holds; the strings the user controls are escaped
where report.md is written (sweeps/report/escape.py).
"""

from __future__ import annotations

import base64
import html
import mimetypes
import re
from pathlib import Path

import markdown
from markdown.extensions import Extension
from markdown.treeprocessors import Treeprocessor

from sweeps.state.storage import write_local

# Narrow screens: the text column is at most 60 em, images shrink to fit, wide tables and code blocks
# scroll inside their own box instead of widening the page.
STYLE = """
body { font: 16px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1f2328;
       max-width: 60em; margin: 0 auto; padding: 0 1em 2em; overflow-wrap: anywhere; }
img { display: block; max-width: 100%; height: auto; margin: 0.8em 0; }
table { display: block; max-width: 100%; overflow-x: auto; border-collapse: collapse; font-size: 0.9em; }
th, td { border: 1px solid #d0d7de; padding: 0.25em 0.6em; text-align: left; overflow-wrap: normal; }
pre { overflow-x: auto; background: #f6f8fa; padding: 0.6em; }
code { font-size: 0.9em; }
"""


class _InlineImages(Treeprocessor):
    """Replace each local ``<img src>`` (relative to ``folder``) with its bytes as a data: URI."""

    def __init__(self, md, folder: Path):
        super().__init__(md)
        self.folder = folder

    def run(self, root):
        for img in root.iter("img"):
            src = img.get("src", "")
            path = self.folder / src
            if "://" in src or src.startswith("data:") or not path.is_file():
                continue
            kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            img.set("src", f"data:{kind};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}")


class _NoScriptAddresses(Treeprocessor):
    """Drop every ``href``/``src`` whose scheme is not http(s) or data: (a local file has none)."""

    def run(self, root):
        for el in root.iter():
            for attr in ("href", "src"):
                scheme = _SCHEME.match(el.get(attr, ""))
                if scheme and scheme.group(1).lower() not in ("http", "https", "data"):
                    del el.attrib[attr]


_SCHEME = re.compile(r"\s*([a-zA-Z][a-zA-Z0-9+.-]*):")


class _InlineImagesExtension(Extension):
    def __init__(self, folder: Path):
        super().__init__()
        self.folder = folder

    def extendMarkdown(self, md):  # noqa: N802 - Python-Markdown's hook name
        md.preprocessors.deregister("html_block")
        md.inlinePatterns.deregister("html")
        md.treeprocessors.register(_InlineImages(md, self.folder), "inline_images", 0)
        md.treeprocessors.register(_NoScriptAddresses(md), "no_script_addresses", -1)


def write_html(md_path: Path) -> Path:
    """Write ``report.html`` beside ``md_path`` (report.md) and return its path."""
    text = md_path.read_text()
    body = markdown.markdown(text, extensions=["tables", _InlineImagesExtension(md_path.parent)])
    heading = next((line[2:] for line in text.splitlines() if line.startswith("# ")), md_path.stem)
    title = html.unescape(re.sub(r"\\(.)", r"\1", heading))  # the heading's text, its escapes undone
    page = (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n"
        f"<body>\n{body}\n</body>\n</html>\n"
    )
    out = md_path.with_suffix(".html")
    write_local(out, page.encode())
    return out
