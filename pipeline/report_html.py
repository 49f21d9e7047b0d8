"""report.html: report.md's text as one self-contained page (figures inlined as data URIs, no
fetches allowed by its content security policy), and headless Chromium to look at it.

    python -m pipeline.report_html RESULTS_DIR [--copy PATH]
        screenshot <sweep_dir>/report.html into <sweep_dir>/report.png (and a copy at PATH)
"""

from __future__ import annotations

import base64
import html
import json
import re
import shutil
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from markdown_it import MarkdownIt

from pipeline import browser
from pipeline.atomic import atomic_write_bytes

# Nothing but inline styles and data: images may load: the page can be mailed, archived or
# uploaded as an MLflow artifact and still look the same, and it never reaches the network.
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
_STYLE = """
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1b1f24;
       margin: 0 auto; padding: 1.2em 2em 4em; max-width: 1180px; }
h1 { font-size: 1.7em; margin-bottom: .2em; } h2 { border-bottom: 1px solid #d0d7de; padding-bottom: .2em;
     margin-top: 2em; } h3 { margin-top: 1.5em; }
nav { background: #f6f8fa; border: 1px solid #d0d7de; border-radius: 6px; padding: .5em 1em; margin: 1em 0; }
nav ol { margin: .3em 0; padding-left: 1.4em; columns: 2; }
.scroll { overflow-x: auto; } table { border-collapse: collapse; font-size: 13px; margin: .6em 0; }
th, td { border: 1px solid #d0d7de; padding: 3px 8px; text-align: left; white-space: nowrap;
         font-variant-numeric: tabular-nums; }
th { background: #f6f8fa; } tr:nth-child(even) td { background: #fbfcfd; }
img { max-width: 100%; height: auto; display: block; margin: .8em 0; border: 1px solid #eaeef2; }
pre { background: #f6f8fa; padding: .7em 1em; overflow-x: auto; font-size: 13px; border-radius: 6px; }
code { font-size: 92%; }
"""
_IMG = re.compile(r'src="figures/([A-Za-z0-9._-]+)\.png"')


def _inline(figures: Mapping[str, Path]):
    def replace(match: re.Match) -> str:
        path = figures.get(match[1])
        if path is None or not Path(path).is_file():
            return match[0]  # left as a link: the Chromium check reports it as a broken image
        return f'src="data:image/png;base64,{base64.b64encode(Path(path).read_bytes()).decode()}"'
    return replace


def _contents(body: str) -> str:
    """A table of contents of the page's sections (h2), linked to ids added to them."""
    entries = []

    def number(match: re.Match) -> str:
        anchor = f"s{len(entries) + 1}"
        entries.append(f'<li><a href="#{anchor}">{match[1]}</a></li>')
        return f'<h2 id="{anchor}">{match[1]}</h2>'

    body = re.sub(r"<h2>(.*?)</h2>", number, body)
    nav = f"<nav><strong>Contents</strong><ol>{''.join(entries)}</ol></nav>" if entries else ""
    first = body.find("<h2")
    return body if first < 0 else body[:first] + nav + body[first:]


def render_html(markdown: str, figures: Mapping[str, Path]) -> str:
    """The page: the markdown rendered (CommonMark and tables), figures inlined, sections listed."""
    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(markdown)
    body = _IMG.sub(_inline(figures), body)
    body = body.replace("<table>", '<div class="scroll"><table>').replace("</table>", "</table></div>")
    title = markdown.splitlines()[0].lstrip("# ").strip() if markdown else "report"
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta http-equiv=\"Content-Security-Policy\" content=\"{_CSP}\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>\n"
            f"<body>\n{_contents(body)}</body></html>\n")


def write_html(path: Path, markdown: str, figures: Mapping[str, Path]) -> Path:
    """Write the page atomically; the same markdown and figures give the same bytes."""
    return atomic_write_bytes(path, render_html(markdown, figures).encode())


# --- looking at it in headless Chromium (pipeline.browser: Debian's `chromium`) ------------------

def screenshot(page: Path, png: Path, *, width: int = 1366, height: int = 900) -> Path:
    """A laptop-sized screenshot of the page's top (what a reader sees first)."""
    browser.render(Path(page).absolute().as_uri(), png, size=(width, height))
    return png


_PROBE = """<script>window.addEventListener("load", () => {
  const out = [...document.images].map(i => ({alt: i.alt, width: i.naturalWidth, complete: i.complete}));
  const pre = document.createElement("pre"); pre.id = "image-status"; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre); });</script>"""


def image_status(page: Path) -> list[dict[str, object]]:
    """Every <img> of the page as Chromium loaded it: alt, naturalWidth (0: broken), complete.

    The page is copied alone into an empty directory first, so that an image that is a file link
    rather than inlined shows as broken; a script that records the images is added to the copy."""
    text = Path(page).read_text()
    text = text.replace(_CSP, _CSP + "; script-src 'unsafe-inline'").replace("</body>", _PROBE + "</body>")
    with tempfile.TemporaryDirectory() as folder:
        copy = Path(folder) / "page.html"
        copy.write_text(text)
        dom = browser.render(copy.as_uri(), Path(folder) / "probe.png", size=(1366, 900))
    found = re.search(r'<pre id="image-status">(.*?)</pre>', dom, re.S)
    if found is None:
        raise RuntimeError(f"chromium: no image status from {page}")
    return json.loads(html.unescape(found[1]))


def main(argv: Sequence[str] | None = None) -> int:
    """Screenshot a sweep's report.html next to it (the README's picture is made this way)."""
    from pipeline.aggregate import resolve_layout

    args = list(sys.argv[1:] if argv is None else argv)
    copy = None
    if "--copy" in args:
        i = args.index("--copy")
        copy, args = Path(args[i + 1]), args[:i] + args[i + 2:]
    if len(args) != 1:
        print("error: usage: python -m pipeline.report_html RESULTS_DIR [--copy PATH]", file=sys.stderr)
        return 2
    try:
        layout = resolve_layout(args[0])
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not layout.report_html_path.is_file():
        print(f"error: RESULTS_DIR: no {layout.report_html_path}; run `python -m pipeline aggregate` first",
              file=sys.stderr)
        return 2
    shot = screenshot(layout.report_html_path, layout.report_screenshot_path)
    print(f"screenshot: {shot}")
    if copy is not None:
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, copy)
        print(f"copy:       {copy}")
    broken = [i["alt"] for i in image_status(layout.report_html_path) if not i["width"]]
    print(f"images: {'all loaded' if not broken else 'broken: ' + ', '.join(map(str, broken))}")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
