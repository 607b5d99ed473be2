"""A report as a list of blocks (headings, paragraphs, lists, tables, images), rendered to Markdown or to one
self-contained HTML page, so that both files say the same thing."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path
from typing import Sequence

from .markdown import pipe_table, relative_link

Block = tuple  # ("h1"|"h2"|"p", text) · ("ul", [text]) · ("table", header, rows) · ("img", alt, path)


def to_markdown(blocks: Sequence[Block], base: Path) -> str:
    """The blocks as Markdown for a file in `base` (images linked relative to it)."""
    out = []
    for block in blocks:
        kind = block[0]
        if kind == "h1":
            out += [f"# {block[1]}", ""]
        elif kind == "h2":
            out += [f"## {block[1]}", ""]
        elif kind == "p":
            out += [block[1], ""]
        elif kind == "ul":
            out += [*(f"- {item}" for item in block[1]), ""]
        elif kind == "table":
            out += [pipe_table(block[1], block[2]), ""]
        elif kind == "img":
            out += [f"![{block[1]}]({relative_link(block[2], base)})", ""]
    return "\n".join(out)


def _inline_html(text: str) -> str:
    """Escape, then the two Markdown marks the report uses: **bold** and `code`."""
    text = html.escape(text, quote=False)
    text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)


HTML_STYLE = ("body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}"
              "table{border-collapse:collapse;margin:1em 0;font-size:0.9em}"
              "th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}"
              "th:first-child,td:first-child{text-align:left}th{background:#f3f3f3}"
              "img{max-width:100%}p{line-height:1.45}")


def to_html(blocks: Sequence[Block]) -> str:
    """The same blocks as one standalone HTML page: images inlined as base64 data URIs."""
    title = next((b[1] for b in blocks if b[0] == "h1"), "benchmark report")
    out = ["<!DOCTYPE html>", "<html><head><meta charset=\"utf-8\">", f"<title>{html.escape(title)}</title>",
           f"<style>{HTML_STYLE}</style>", "</head><body>"]
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2", "p"):
            out.append(f"<{kind}>{_inline_html(block[1])}</{kind}>")
        elif kind == "ul":
            out.append("<ul>" + "".join(f"<li>{_inline_html(item)}</li>" for item in block[1]) + "</ul>")
        elif kind == "table":
            out.append(_html_table(block[1], block[2]))
        elif kind == "img":
            data = base64.b64encode(Path(block[2]).read_bytes()).decode("ascii")
            out.append(f"<p><img alt=\"{html.escape(block[1])}\" src=\"data:image/png;base64,{data}\"></p>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def _html_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>" for cells in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
