"""HTML building blocks of the run report: escaped text, tables, figures embedded as data URIs, traced numbers and
the page around the sections (one style sheet, a ``@media print`` layout, no script, nothing fetched).

Every figure of a JSON file that the report shows is a *traced number*: ``<data value="0.8123" data-src="metrics/
cnn5/eval.json" data-key="/test/macro_recall">0.812</data>``: the exact value, the file and the JSON pointer (RFC
6901) it came from, so that a reader (and the tests) can check any number against its source.
"""

from __future__ import annotations

import base64
import re
from html import escape
from pathlib import Path

from lungxray.core.numbers import MISSING, finite, fmt

__all__ = ["esc", "evidence", "traced", "traced_interval", "table", "figure", "absent", "section", "page", "pointer"]


def esc(text) -> str:
    return escape("" if text is None else str(text), quote=True)


def evidence(eid: str, body: str) -> str:
    """``body`` marked as the evidence ``eid`` that a checklist item points to (:mod:`lungxray.report.checklist`)."""
    return f'<div id="{esc(eid)}">{body}</div>'


def pointer(*keys) -> str:
    """The JSON pointer of ``keys`` (``/test/per_class/normal/recall``)."""
    return "".join("/" + str(k).replace("~", "~0").replace("/", "~1") for k in keys)


def traced(value, src: str | Path, keys: tuple | list, digits: int = 3) -> str:
    """A number with the file and JSON pointer it came from (see the module docstring); ``-`` when missing."""
    x = finite(value)
    if x is None:
        return f'<data class="missing" data-src="{esc(src)}" data-key="{esc(pointer(*keys))}">{MISSING}</data>'
    shown = str(int(x)) if isinstance(value, int) else fmt(x, digits)
    return f'<data value="{x!r}" data-src="{esc(src)}" data-key="{esc(pointer(*keys))}">{shown}</data>'


def traced_interval(block: dict, key: str, src: str | Path, prefix: tuple | list, digits: int = 3) -> str:
    """``value [low, high]`` of ``block[key]`` and its ``key_ci_low`` / ``key_ci_high``, each traced."""
    keys = list(prefix)
    v = traced(block.get(key), src, keys + [key], digits)
    lo, hi = block.get(f"{key}_ci_low"), block.get(f"{key}_ci_high")
    if finite(lo) is None or finite(hi) is None:
        return v
    return (f"{v} <span class=ci>[{traced(lo, src, keys + [key + '_ci_low'], digits)}, "
            f"{traced(hi, src, keys + [key + '_ci_high'], digits)}]</span>")


def table(header: list[str], rows: list[list], caption: str = "", raw: bool = True) -> str:
    """A table; cells are HTML already (``raw``) or text to escape."""
    cell = (lambda c: str(c)) if raw else esc
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(c)}</td>" for c in r) + "</tr>" for r in rows)
    cap = f"<caption>{caption}</caption>" if caption else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def figure(path: Path, shown_as: str, caption: str, root: Path, max_width: str = "100%") -> str:
    """The PNG at ``root/path`` embedded as a data URI, captioned with the file it came from; a note when absent."""
    f = Path(root) / path
    if not f.is_file():
        return absent(f"figure {shown_as}", f"{path} is missing")
    raw, kind, note = f.read_bytes(), "png", ""
    if len(raw) > MAX_EMBEDDED_BYTES:
        raw, kind, note = reduced(f), "jpeg", "; reduced for the page"
    data = base64.b64encode(raw).decode("ascii")
    return (f'<figure><img style="max-width:{max_width}" alt="{esc(caption)}" src="data:image/{kind};base64,{data}">'
            f"<figcaption>{esc(caption)} <span class=src>({esc(str(path))}{note})</span></figcaption></figure>")


MAX_EMBEDDED_BYTES = 400_000  # a larger PNG (X-ray contact sheets, Grad-CAM grids) is embedded reduced: the page stays
MAX_EMBEDDED_WIDTH = 1600  # a few MB; the file named in the caption keeps every pixel


def reduced(f: Path) -> bytes:
    """The image at ``f`` at most :data:`MAX_EMBEDDED_WIDTH` wide, as a JPEG (quality 85)."""
    import io

    from PIL import Image

    with Image.open(f) as im:
        im = im.convert("RGB")
        if im.width > MAX_EMBEDDED_WIDTH:
            im = im.resize((MAX_EMBEDDED_WIDTH, round(im.height * MAX_EMBEDDED_WIDTH / im.width)), Image.LANCZOS)
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=85, optimize=True)
    return buf.getvalue()


def absent(what: str, why: str) -> str:
    """The note that says what is absent from the report and why."""
    why = re.sub(r"`([^`]+)`", r"<code>\1</code>", esc(why))
    return f'<p class="absent"><strong>Absent: {esc(what)}.</strong> {why}</p>'


def section(sid: str, number: int, title: str, body: str) -> str:
    return f'<section id="{esc(sid)}"><h2>{number}. {esc(title)}</h2>\n{body}\n</section>'


STYLE = """
:root { --ink:#1b1f24; --muted:#5a6470; --line:#d6dbe1; --warn:#8a4b00; --warnbg:#fff4e0; --bad:#9b1c1c; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; color: var(--ink);
       max-width: 1100px; margin: 0 auto; padding: 24px; }
h1 { font-size: 24px; margin: 0 0 4px; } h2 { font-size: 19px; border-bottom: 2px solid var(--line);
       padding-bottom: 4px; margin-top: 36px; } h3 { font-size: 15px; margin: 20px 0 6px; }
.sub, .src, figcaption, caption { color: var(--muted); font-size: 12px; }
caption { text-align: left; caption-side: top; padding-bottom: 2px; }
table { border-collapse: collapse; margin: 8px 0 14px; font-size: 13px; }
th, td { border: 1px solid var(--line); padding: 3px 7px; text-align: left; vertical-align: top; }
th { background: #f3f5f7; } td data { font-variant-numeric: tabular-nums; }
.ci { color: var(--muted); white-space: nowrap; }
figure { margin: 10px 0 18px; } img { height: auto; border: 1px solid var(--line); }
.warn { background: var(--warnbg); border-left: 4px solid var(--warn); padding: 6px 10px; margin: 6px 0; }
.absent { background: #f3f5f7; border-left: 4px solid var(--muted); padding: 6px 10px; }
.ok { color: #1d6b2f; } .no { color: var(--bad); }
nav ol { columns: 2; font-size: 13px; } code, pre { font: 12px/1.35 ui-monospace, Menlo, Consolas, monospace; }
pre { background: #f6f8fa; padding: 8px; overflow-x: auto; white-space: pre-wrap; }
details summary { cursor: pointer; color: var(--muted); }
@media print {
  body { max-width: none; padding: 0; font-size: 11px; }
  nav { display: none; }
  section { break-before: page; } section#summary { break-before: avoid; }
  figure, table, .warn { break-inside: avoid; } h2, h3 { break-after: avoid; }
  img { max-width: 100% !important; max-height: 22cm; }
  details { display: block; } details > * { display: block; }
  a { color: inherit; text-decoration: none; }
}
@page { size: A4; margin: 14mm; }
"""


def page(title: str, subtitle: str, sections: list[tuple[str, str, str]]) -> str:
    """The whole document: ``sections`` are ``(id, title, body html)`` in order; numbered, with a contents list."""
    nav = "".join(f'<li><a href="#{esc(sid)}">{esc(t)}</a></li>' for sid, t, _ in sections)
    body = "\n".join(section(sid, i, t, html) for i, (sid, t, html) in enumerate(sections, 1))
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; img-src data:; '
            f'style-src \'unsafe-inline\'">'
            f"<title>{esc(title)}</title><style>{STYLE}</style></head>\n<body>\n<header><h1>{esc(title)}</h1>"
            f'<p class="sub">{subtitle}</p></header>\n<nav><ol>{nav}</ol></nav>\n{body}\n</body></html>\n')
