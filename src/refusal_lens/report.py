"""The self-contained ``report.html`` (images inlined, no network needed to open it) and its helpers.

Each pipeline stage builds its own sections (``Stage.report``) with ``subplots``,
``save_figure``, ``img`` and ``table``; ``write_report`` puts them in one page.
"""

from __future__ import annotations

import base64
import html
import io
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


def table(rows: Sequence[Sequence], header: Sequence[str]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def percent(value: float | None, digits: int = 0) -> str:
    """``"67%"``, or ``"n/a"`` for a value that was not measured."""
    return "n/a" if value is None else f"{value:.{digits}%}"


def number(value: float | None, spec: str = ".2f") -> str:
    return "n/a" if value is None else format(value, spec)


def write_report(out: Path, *, model: str, saes: str, created: str, sections: Sequence[ReportSection],
                 cost: dict[str, dict], versions: dict) -> Path:
    parts = ["<h1>refusal-lens report</h1>",
             f"<p>Model <b>{html.escape(model)}</b>, SAEs <b>{html.escape(saes)}</b>, created {created}.</p>"]
    parts += [f"<h2>{html.escape(s.title)}</h2>{s.html}" for s in sections]
    rows = [[stage, c.get("forward_passes"), c.get("wall_time_s")] for stage, c in cost.items()]
    parts += ["<h2>Cost</h2>", table(rows, ["stage", "forward passes", "wall time (s)"]),
              "<h2>Versions</h2>", table(list(versions.items()), ["package", "version"])]
    style = ("body{font-family:sans-serif;max-width:1100px;margin:auto;padding:1em}"
             "table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ccc;padding:3px 6px;vertical-align:top}"
             "img{max-width:100%}")
    page = f"<!doctype html><html><head><meta charset='utf-8'><title>refusal-lens report</title><style>{style}</style>" \
           f"</head><body>{''.join(parts)}</body></html>"
    return write_atomic(out / "report.html", lambda tmp: tmp.write_text(page))
