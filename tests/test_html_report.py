"""The HTML report: one self-contained page beside every report.md (defend, compare, scan), which
parses, embeds its images and points at nothing outside itself, whatever the Markdown holds."""

import os

from conftest import assert_self_contained_page

from goodnet.report.html_page import external_references, render_page


def test_demo_report_page_is_self_contained(demo_run):
    page = assert_self_contained_page(demo_run["out"])
    report = open(os.path.join(demo_run["out"], "report.md")).read()
    assert page.count("<table>") == report.count("\n|---") or page.count("<table>") >= 2
    for heading in ("B / B' / G", "Detection", "Pruning curve", "Channel activations", "Samples"):
        assert f"<h2>{heading.replace(chr(39), '&#x27;')}</h2>" in page or f"<h2>{heading}</h2>" in page
    assert "<title>goodnet: repair prune</title>" in page


def test_hostile_markdown_cannot_reach_out(tmp_path):
    (tmp_path / "ok.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (tmp_path / "notes.txt").write_text("x")
    outside = tmp_path.parent / "secret.png"
    outside.write_bytes(b"\x89PNG\r\n\x1a\n")
    markdown = "\n\n".join(
        [
            "# t",
            "![ok](ok.png)",
            "![web](https://example.com/x.png)",
            "![up](../secret.png)",
            f"![abs]({outside})",
            "![txt](notes.txt)",
            "[a link](http://example.com)",
            "[local](notes.txt)",
            "[anchor](#t)",
            "<script>alert(1)</script>",
            "<img src=http://example.com/y.png>",
            "<a href='http://example.com'>raw</a>",
            "| a | b |\n|---|---|\n| `<b>` | 2 |",
        ]
    )
    page = render_page(markdown, str(tmp_path), "t </title><script>")
    assert external_references(page) == []
    assert page.count('<img src="data:image/png;base64,') == 1
    assert page.count("image not embedded") == 4
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert '<a href="#t">anchor</a>' in page and "a link" in page and "local" in page
    assert "<td><code>&lt;b&gt;</code></td>" in page


def test_external_references_finds_what_loads_from_elsewhere():
    assert external_references('<img src="http://x/y.png">') == ["<img src=http://x/y.png>"]
    assert external_references('<link rel="stylesheet" href="a.css">')
    assert external_references("<style>body{background:url(x.png)}</style>")
    assert external_references('<img src="data:image/png;base64,AAAA"><a href="#x">x</a>') == []
