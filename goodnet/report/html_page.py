"""One self-contained HTML page per report, beside its Markdown: the same text rendered by
markdown-it-py (CommonMark plus tables), every image it shows embedded as a data: URI, one inline
style sheet, and nothing that points outside the file (links to other files become plain text,
raw HTML in the Markdown is shown as text). So the page opens anywhere, offline, and can be sent
on as one file; report.md stays the source of truth and the two never differ in content.
"""

from __future__ import annotations

import base64
import html
import os
from html.parser import HTMLParser

from markdown_it import MarkdownIt

IMAGE_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".svg": "image/svg+xml",
    ".gif": "image/gif",
}

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; max-width: 1100px;
       margin: 2em auto; padding: 0 1em; color: #1b1b1b; line-height: 1.45; }
h1 { border-bottom: 2px solid #ddd; padding-bottom: .3em; }
h2 { border-bottom: 1px solid #eee; padding-bottom: .2em; margin-top: 1.8em; }
table { border-collapse: collapse; margin: 1em 0; font-size: .92em; display: block; overflow-x: auto; }
th, td { border: 1px solid #d0d7de; padding: .3em .6em; text-align: right; white-space: nowrap; }
th { background: #f3f5f7; }
td:first-child, th:first-child { text-align: left; }
tr:nth-child(even) td { background: #fafbfc; }
code { background: #f3f5f7; padding: .1em .3em; border-radius: 3px; font-size: .92em; }
img { max-width: 100%; height: auto; border: 1px solid #eee; margin: .5em 0; }
.missing { color: #a00; font-style: italic; }
footer { margin-top: 3em; color: #777; font-size: .85em; }
"""


def _inside(directory: str, name: str) -> str | None:
    """`name` as a file inside `directory`, or None (absolute paths, `..`, URLs, missing files)."""
    if not name or "://" in name or name.startswith(("/", "\\", "data:")) or ":" in name.split("/")[0]:
        return None
    path = os.path.realpath(os.path.join(directory, name))
    root = os.path.realpath(directory)
    if os.path.commonpath([path, root]) != root or not os.path.isfile(path):
        return None
    return path


def _data_uri(path: str) -> str | None:
    kind = IMAGE_TYPES.get(os.path.splitext(path)[1].lower())
    if kind is None:
        return None
    with open(path, "rb") as f:
        return f"data:{kind};base64,{base64.b64encode(f.read()).decode('ascii')}"


def _renderer(directory: str) -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": False}).enable("table")

    def image(renderer, tokens, idx, options, env):
        token = tokens[idx]
        alt = html.escape(token.content or "", quote=True)
        src = token.attrGet("src") or ""
        path = _inside(directory, str(src))
        uri = _data_uri(path) if path else None
        if uri is None:
            return f'<span class="missing">[image not embedded: {html.escape(str(src))}]</span>'
        return f'<img src="{uri}" alt="{alt}">'

    def link_open(renderer, tokens, idx, options, env):
        href = str(tokens[idx].attrGet("href") or "")
        tokens[idx].meta["kept"] = href.startswith("#")
        return f'<a href="{html.escape(href, quote=True)}">' if tokens[idx].meta["kept"] else ""

    def link_close(renderer, tokens, idx, options, env):
        opening = next((t for t in reversed(tokens[:idx]) if t.type == "link_open"), None)
        return "</a>" if opening is not None and opening.meta.get("kept") else ""

    md.add_render_rule("image", image)
    md.add_render_rule("link_open", link_open)
    md.add_render_rule("link_close", link_close)
    return md


def render_page(markdown_text: str, directory: str, title: str) -> str:
    """The whole HTML document for `markdown_text`, its images read from `directory`."""
    body = _renderer(directory).render(markdown_text)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n{body}"
        "<footer>Written by goodnet from the report.md beside this file; every image is embedded, "
        "nothing is loaded from elsewhere.</footer>\n</body>\n</html>\n"
    )


def write_page(directory: str, markdown_name: str, html_name: str, title: str) -> str:
    """Render `directory/markdown_name` into `directory/html_name`; return the HTML file's path."""
    with open(os.path.join(directory, markdown_name), encoding="utf-8") as f:
        page = render_page(f.read(), directory, title)
    path = os.path.join(directory, html_name)
    with open(path, "w", encoding="utf-8") as f:
        f.write(page)
    return path


class _References(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name in ("src", "href", "srcset", "poster", "action", "data") and value is not None:
                if not (value.startswith("data:") or value.startswith("#")):
                    self.found.append(f"<{tag} {name}={value[:80]}>")
        if tag in ("link", "script", "iframe", "object", "embed", "base"):
            self.found.append(f"<{tag}>")


def external_references(page: str) -> list[str]:
    """Everything in an HTML page that would load or lead to something outside it (for the tests)."""
    parser = _References()
    parser.feed(page)
    parser.close()
    found = parser.found
    if "url(" in page.split("<style>", 1)[-1].split("</style>", 1)[0] or "@import" in page:
        found.append("a style sheet reference")
    return found


__all__ = ["external_references", "render_page", "write_page"]
