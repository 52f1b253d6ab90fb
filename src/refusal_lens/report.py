"""The self-contained ``report.html`` (images inlined, no network needed to open it) and its helpers.

Each pipeline stage builds its own sections (``Stage.report``) with ``subplots``,
``save_figure``, ``img``, ``table`` and ``sortable_table``; ``write_report`` puts them in one
page, each section a ``<section>``, with the page's own small script (sorting tables by a
click on a header, opening a card linked to) and style inline: the file opens offline.
Verbatim text of prompts and answers goes in ``data(...)`` (``class="data"``), so a check for
values printed as Python reprs can tell it from the report's own words.
"""

from __future__ import annotations

import base64
import html
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from refusal_lens.artifacts import write_atomic  # noqa: E402


@dataclass(frozen=True)
class ReportSection:
    title: str
    html: str  # the body, already escaped


def subplots(**kwargs):
    """``(figure, axes)`` on the non-interactive backend."""
    return plt.subplots(**kwargs)


def save_figure(fig, folder: Path, name: str) -> str:
    """Write ``folder/name.png`` and return it base64-encoded for ``img``."""
    folder.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    data = buffer.getvalue()
    write_atomic(folder / f"{name}.png", lambda tmp: tmp.write_bytes(data))
    return base64.b64encode(data).decode()


def img(data: str | None, alt: str) -> str:
    return f'<img alt="{alt}" src="data:image/png;base64,{data}">' if data else f"<p><i>No {alt}.</i></p>"


@dataclass(frozen=True)
class Cell:
    """A table cell of ready HTML, and the value a sortable table sorts it by (default: its text)."""

    html: str
    sort: float | str | None = None


def cell_text(value) -> str:
    """A plain value as a reader should see it: ``n/a`` for a value not measured, never a repr."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return format(value, ".4g")
    if isinstance(value, (dict, list, tuple, set)):
        raise TypeError(f"A report cell got a {type(value).__name__} ({value!r:.60}): format it first.")
    return str(value)


def _td(value) -> str:
    if isinstance(value, Cell):
        sort = "" if value.sort is None else f' data-sort="{html.escape(str(value.sort))}"'
        return f"<td{sort}>{value.html}</td>"
    return f"<td>{html.escape(cell_text(value))}</td>"


def table(rows: Sequence[Sequence], header: Sequence[str], *, sortable: bool = False, id: str | None = None,
          scroll: bool = False) -> str:
    """Plain values are escaped (``cell_text``), ``Cell``s put in as they are. ``sortable``: a
    click on a header sorts the rows by that column (numerically where every value is a number).
    ``scroll``: a long table scrolls in a box of its own, its header kept in view."""
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(_td(c) for c in row) + "</tr>" for row in rows)
    attributes = (' class="sortable"' if sortable else "") + (f' id="{html.escape(id)}"' if id else "")
    page = f"<table{attributes}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    return f'<div class="scroll">{page}</div>' if scroll else page


def data(text: str, tag: str = "span") -> str:
    """Verbatim prompt or model text, escaped and marked ``class="data"``."""
    return f'<{tag} class="data">{html.escape(text)}</{tag}>'


def anchor(title: str) -> str:
    """The id of a section titled ``title``: ``Minimal feature set`` → ``minimal-feature-set``."""
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-") or "section"


def percent(value: float | None, digits: int = 0) -> str:
    """``"67%"``, or ``"n/a"`` for a value that was not measured."""
    return "n/a" if value is None else f"{value:.{digits}%}"


def number(value: float | None, spec: str = ".2f") -> str:
    return "n/a" if value is None else format(value, spec)


STYLE = """
body{font-family:sans-serif;max-width:1100px;margin:auto;padding:1em;color:#222}
table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ccc;padding:3px 6px;vertical-align:top}
img{max-width:100%}
table.sortable th{cursor:pointer;user-select:none;background:#f4f4f4;position:sticky;top:0}
div.scroll{max-height:520px;overflow:auto;border-bottom:1px solid #ccc;margin-bottom:8px}
table.sortable th[aria-sort=ascending]::after{content:" \\25B2"}
table.sortable th[aria-sort=descending]::after{content:" \\25BC"}
code.tok{white-space:pre;background:#eef;border-radius:3px;padding:0 2px;font-size:11px}
details.card{border:1px solid #ccc;border-radius:4px;margin:6px 0;padding:4px 8px}
details.card summary{cursor:pointer;font-weight:bold}
details.card:target{border-color:#e90}
.prompt{font-family:monospace;font-size:12px;white-space:pre-wrap;line-height:1.6;margin:3px 0}
.prompt mark{background:#fb0;font-weight:bold;outline:1px solid #a60}
"""

SCRIPT = """
function sortValue(cell) {
  const raw = cell.dataset.sort !== undefined ? cell.dataset.sort : cell.textContent.trim();
  const number = parseFloat(raw);
  return {raw: raw, number: number, numeric: raw !== '' && !isNaN(number) && isFinite(raw)};
}
function sortTable(table, column, header) {
  const body = table.tBodies[0];
  const rows = Array.from(body.rows);
  const values = rows.map(row => sortValue(row.cells[column]));
  const numeric = values.every(v => v.numeric || v.raw === '');
  const ascending = header.getAttribute('aria-sort') !== 'ascending';
  const order = rows.map((row, i) => i).sort((a, b) => {
    const x = values[a], y = values[b];
    let d = numeric ? (x.raw === '' ? -Infinity : x.number) - (y.raw === '' ? -Infinity : y.number)
                    : x.raw.localeCompare(y.raw);
    if (isNaN(d)) d = 0;
    return ascending ? d : -d;
  });
  for (const th of table.tHead.rows[0].cells) th.removeAttribute('aria-sort');
  header.setAttribute('aria-sort', ascending ? 'ascending' : 'descending');
  for (const i of order) body.appendChild(rows[i]);
}
function openTarget() {
  const id = decodeURIComponent(location.hash.slice(1));
  const target = id && document.getElementById(id);
  if (target && target.tagName === 'DETAILS') target.open = true;
}
document.addEventListener('DOMContentLoaded', () => {
  for (const table of document.querySelectorAll('table.sortable')) {
    Array.from(table.tHead.rows[0].cells).forEach((th, column) => {
      th.title = 'sort by this column';
      th.addEventListener('click', () => sortTable(table, column, th));
    });
  }
  openTarget();
});
window.addEventListener('hashchange', openTarget);
"""


def write_report(out: Path, *, model: str, saes: str, created: str, sections: Sequence[ReportSection],
                 cost: dict[str, dict], versions: dict) -> Path:
    rows = [[stage, c.get("forward_passes"), number(c.get("wall_time_s"), ".3g")] for stage, c in cost.items()]
    sections = [*sections, ReportSection("Cost", table(rows, ["stage", "forward passes", "wall time (s)"])),
                ReportSection("Versions", table(list(versions.items()), ["package", "version"]))]
    contents = " · ".join(f'<a href="#{anchor(s.title)}">{html.escape(s.title)}</a>' for s in sections)
    parts = ["<h1>refusal-lens report</h1>",
             f"<p>Model <b>{html.escape(model)}</b>, SAEs <b>{html.escape(saes)}</b>, "
             f"created {html.escape(created)}.</p>",
             f"<nav><p>{contents}</p></nav>"]
    parts += [f'<section id="{anchor(s.title)}"><h2>{html.escape(s.title)}</h2>{s.html}</section>' for s in sections]
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>refusal-lens report</title>"
            f"<style>{STYLE}</style><script>{SCRIPT}</script></head><body>{''.join(parts)}</body></html>")
    return write_atomic(out / "report.html", lambda tmp: tmp.write_text(page))
