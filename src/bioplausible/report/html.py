"""One self-contained HTML page: every table inline, every plot embedded as a data URI."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field

from .plots import Figure

CSS = """
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 2em auto; max-width: 1200px;
       padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; margin: 1em 0; font-size: .9em; }
th, td { border: 1px solid #ccc; padding: .3em .6em; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
td.best { background: #e6f4e6; }
caption { caption-side: bottom; font-size: .85em; color: #555; text-align: left; padding-top: .3em; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: .85em; color: #555; }
.note { color: #555; font-size: .9em; } .meta td { text-align: left; }
.scroll { overflow-x: auto; }
"""

# Counts the embedded images that decoded, so a broken page says so (and a headless
# browser check can read the count from the DOM).
CHECK_JS = """
window.addEventListener('load', function () {
  var imgs = document.querySelectorAll('img.plot'), ok = 0;
  imgs.forEach(function (i) { if (i.complete && i.naturalWidth > 0) ok++; });
  var el = document.getElementById('render-check');
  el.textContent = ok + ' of ' + imgs.length + ' figures rendered';
  el.setAttribute('data-ok', ok); el.setAttribute('data-total', imgs.length);
});
"""


@dataclass
class Section:
    id: str
    title: str
    body: str  # HTML
    notes: list[str] = field(default_factory=list)


def figure_html(f: Figure) -> str:
    uri = "data:image/png;base64," + base64.b64encode(f.png).decode("ascii")
    return (f'<figure id="fig-{f.name}"><img class="plot" alt="{html.escape(f.title)}" src="{uri}">'
            f"<figcaption><b>{html.escape(f.title)}.</b> {html.escape(f.caption)} "
            f"(files: {f.name}.png, {f.name}.svg)</figcaption></figure>")


def page(title: str, meta: list[tuple[str, str]], sections: list[Section]) -> str:
    toc = "".join(f'<li><a href="#{s.id}">{html.escape(s.title)}</a></li>' for s in sections)
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        '<table class="meta"><tbody>' + "".join(
            f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in meta) + "</tbody></table>",
        '<p id="render-check" class="note" data-ok="" data-total="">figures not checked (scripts off)</p>',
        f"<nav><ol>{toc}</ol></nav>",
    ]
    for s in sections:
        parts.append(f'<section id="{s.id}"><h2>{html.escape(s.title)}</h2>')
        parts.append(s.body)
        for n in s.notes:
            parts.append(f'<p class="note">{html.escape(n)}</p>')
        parts.append("</section>")
    parts.append(f"<script>{CHECK_JS}</script></body></html>")
    return "\n".join(parts)
