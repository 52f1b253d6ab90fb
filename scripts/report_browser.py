"""Open a run's report.html in headless Chromium, as a reader would, and check it; or screenshot it.

    python scripts/report_browser.py check runs/demo/report.html
    python scripts/report_browser.py screenshot runs/demo/report.html docs/report.png [--section features]

``check`` loads a copy of the report with a small probe script put first in its ``<head>``;
the probe records every script error, ``console.error`` / ``console.warn`` call, failed
resource and unhandled rejection, and after the page has loaded it checks that every image
decoded, every section has something in it, every in-page link has a target, each sortable
table sorts by a click on any numeric header (both ways), and a click on a feature opens its
card. It writes its findings into the page, which Chromium prints (``--dump-dom``); Chromium's
own console log (``--enable-logging=stderr``) is read too, and the report's own text (not
verbatim prompts and answers, marked ``class="data"``) is searched for values printed as
Python reprs (``None``, ``{'``, ``[(`` ...). Exit status 1 when anything is wrong. Chromium is
the Debian package ``chromium`` (``.ci/run`` installs it when missing).
"""

from __future__ import annotations

import argparse
import html
import json
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
         "--hide-scrollbars", "--mute-audio"]
RESULT_ID = "browser-check-result"

PROBE = """<script>
(function () {
  const problems = [];
  window.__reportProblems = problems;
  window.addEventListener('error', (event) => {
    const target = event.target;
    if (target && target !== window && target.tagName) {
      problems.push('failed to load ' + target.tagName.toLowerCase() + ' ' +
                    (target.getAttribute('alt') || (target.src || target.href || '').slice(0, 60)));
    } else {
      problems.push('script error: ' + event.message + ' (line ' + event.lineno + ')');
    }
  }, true);
  window.addEventListener('unhandledrejection', (event) => problems.push('unhandled rejection: ' + event.reason));
  for (const level of ['error', 'warn']) {
    const original = console[level].bind(console);
    console[level] = (...args) => { problems.push('console.' + level + ': ' + args.join(' ')); original(...args); };
  }
  function text(node) { return (node.textContent || '').replace(/\\s+/g, ' ').trim(); }
  function cellValue(cell) {
    const raw = cell.dataset.sort !== undefined ? cell.dataset.sort : text(cell);
    return raw === '' ? -Infinity : Number(raw);
  }
  function checkSorting(result) {
    for (const table of document.querySelectorAll('table.sortable')) {
      const headers = Array.from(table.tHead.rows[0].cells);
      const rows = () => Array.from(table.tBodies[0].rows);
      const before = rows().length;
      headers.forEach((th, column) => {
        const values = () => rows().map((row) => cellValue(row.cells[column]));
        if (!values().every((v) => !Number.isNaN(v))) return;  // a text column
        result.sorted_columns.push(text(th));
        th.click();
        const up = values();
        if (up.some((v, i) => i > 0 && up[i - 1] > v)) result.sort_failures.push(text(th) + ' (ascending)');
        th.click();
        const down = values();
        if (down.some((v, i) => i > 0 && down[i - 1] < v)) result.sort_failures.push(text(th) + ' (descending)');
        if (rows().length !== before) result.sort_failures.push(text(th) + ' (rows lost)');
      });
    }
  }
  function check() {
    const result = {problems: problems, broken_images: [], empty_sections: [], dead_links: [],
                    sorted_columns: [], sort_failures: [], sections: [], cards: 0, card_opened: null};
    for (const image of document.images) {
      if (!image.complete || image.naturalWidth === 0) result.broken_images.push(image.alt || image.src.slice(0, 40));
    }
    for (const section of document.querySelectorAll('section')) {
      const title = section.querySelector('h2') ? text(section.querySelector('h2')) : section.id;
      result.sections.push(title);
      const body = Array.from(section.children).filter((child) => child.tagName !== 'H2');
      if (!body.some((child) => text(child) || child.querySelector('img') || child.tagName === 'IMG')) {
        result.empty_sections.push(title);
      }
    }
    for (const link of document.querySelectorAll('a[href^="#"]')) {
      const id = decodeURIComponent(link.getAttribute('href').slice(1));
      if (!document.getElementById(id)) result.dead_links.push(link.getAttribute('href'));
    }
    checkSorting(result);
    const cards = document.querySelectorAll('details.card');
    result.cards = cards.length;
    const link = document.querySelector('#feature-table a[href^="#card-"]');
    if (link) {
      const card = document.getElementById(link.getAttribute('href').slice(1));
      card.open = false;
      link.click();
      setTimeout(() => { result.card_opened = card.open; report(result); }, 100);
    } else {
      report(result);
    }
  }
  function report(result) {
    const out = document.createElement('pre');
    out.id = '""" + RESULT_ID + """';
    out.textContent = JSON.stringify(result);
    document.body.appendChild(out);
  }
  window.addEventListener('load', () => setTimeout(check, 0));
})();
</script>"""


@dataclass
class BrowserCheck:
    """What headless Chromium saw. ``ok`` when nothing is wrong."""

    problems: list[str] = field(default_factory=list)  # script errors, console errors, failed loads
    console: list[str] = field(default_factory=list)   # every console message Chromium logged
    broken_images: list[str] = field(default_factory=list)
    empty_sections: list[str] = field(default_factory=list)
    dead_links: list[str] = field(default_factory=list)
    sort_failures: list[str] = field(default_factory=list)
    reprs: list[str] = field(default_factory=list)  # values printed as Python reprs (``python_reprs``)
    sorted_columns: list[str] = field(default_factory=list)
    sections: list[str] = field(default_factory=list)
    cards: int = 0
    card_opened: bool | None = None  # a click on the feature table's first link opened its card

    @property
    def failures(self) -> list[str]:
        found = [f"{what}: {item}" for what, items in (
            ("problem", self.problems), ("console", self.console), ("broken image", self.broken_images),
            ("empty section", self.empty_sections), ("dead link", self.dead_links),
            ("sorting", self.sort_failures), ("Python repr", self.reprs)) for item in items]
        if self.card_opened is False:
            found.append("a click on a feature in the table did not open its card")
        return found

    @property
    def ok(self) -> bool:
        return not self.failures


REPR_PATTERNS = {  # what a value printed with str() / repr() looks like, never the report's own words
    "None": r"\bNone\b", "True/False": r"\b(?:True|False)\b", "dict": r"\{'|\{\"|\{\}", "list": r"\['|\[\]",
    "tuple": r"\[\(|\(\d+, \d+\)", "nan/inf": r"\b(?:nan|NaN|inf)\b", "tensor": r"\b(?:tensor|array)\(",
    "object": r"object at 0x|<(?:function|bound method|class) ", "numpy scalar": r"\bnp\.\w+\(",
}


class _ReportText(HTMLParser):
    """The report's own text: not scripts or styles, not verbatim prompt or model text (``class="data"``)."""

    SKIP = {"script", "style"}
    VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack: list[bool] = []  # per open element: is its text skipped
        self.chunks: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag in self.VOID:
            return
        classes = (dict(attrs).get("class") or "").split()
        self.stack.append(tag in self.SKIP or "data" in classes or any(self.stack))

    def handle_endtag(self, tag):
        if tag not in self.VOID and self.stack:
            self.stack.pop()

    def handle_data(self, data):
        if not any(self.stack):
            self.chunks.append(data)


def python_reprs(page: str) -> list[str]:
    """Each place where the report's own text shows a value as Python prints it, with its context."""
    parser = _ReportText()
    parser.feed(page)
    text = " ".join(parser.chunks)
    return [f"{kind}: ...{text[max(0, m.start() - 40):m.end() + 40]}..."
            for kind, pattern in REPR_PATTERNS.items() for m in re.finditer(pattern, text)]


def find_chromium() -> str | None:
    return next((path for name in CHROMIUM_NAMES if (path := shutil.which(name))), None)


def _chromium(chromium: str | None) -> str:
    found = chromium or find_chromium()
    if not found:
        raise FileNotFoundError("No Chromium found (looked for " + ", ".join(CHROMIUM_NAMES) + "): install the "
                                "Debian package, `apt-get install -y chromium`.")
    return found


def into_head(page: str, markup: str) -> str:
    """``markup`` first in the page's head (after a ``<meta charset>``, which must come early)."""
    match = re.search(r"<head[^>]*>(\s*<meta charset[^>]*>)?", page, flags=re.I)
    if not match:
        raise ValueError("The page has no <head>.")
    return page[:match.end()] + markup + page[match.end():]


def with_probe(page: str) -> str:
    return into_head(page, PROBE)


def one_section(page: str, section: str) -> str:
    """The page with only its title lines and the section of id ``section`` shown, the first
    feature card in it open. (Chromium's headless screenshot draws a page scrolled to an
    anchor blank, so a section further down is shown by hiding the rest.)"""
    if f'<section id="{section}"' not in page:
        raise ValueError(f"The report has no section {section!r}.")
    return into_head(page, f"<style>body > section:not(#{section}), body > nav {{display:none}}</style>"
                           "<script>document.addEventListener('DOMContentLoaded', () => {"
                           f"const card = document.querySelector('#{section} details.card');"
                           "if (card) card.open = true; });</script>")


def check_report(report: Path, *, chromium: str | None = None, timeout: float = 120) -> BrowserCheck:
    """Load ``report`` in headless Chromium with the probe and return what it found."""
    page = Path(report).read_text(encoding="utf-8")
    with tempfile.TemporaryDirectory(prefix="report-check-") as folder:
        copy = Path(folder) / "report.html"
        copy.write_text(with_probe(page), encoding="utf-8")
        done = subprocess.run([_chromium(chromium), *FLAGS, f"--user-data-dir={folder}/profile",
                               "--enable-logging=stderr", "--v=0", "--virtual-time-budget=10000", "--dump-dom",
                               copy.as_uri()], capture_output=True, text=True, timeout=timeout)
    found = re.search(rf'<pre id="{RESULT_ID}">(.*?)</pre>', done.stdout, flags=re.S)
    if not found:
        raise RuntimeError(f"Chromium printed no check result (exit {done.returncode}); its stderr ends:\n"
                           + done.stderr[-2000:])
    result = json.loads(html.unescape(found[1]))
    console = [line.split("] ", 1)[-1] for line in done.stderr.splitlines() if ":CONSOLE" in line]
    return BrowserCheck(console=console, reprs=python_reprs(page), **result)


def screenshot(report: Path, png: Path, *, section: str | None = None, width: int = 1200, height: int = 1600,
               chromium: str | None = None, timeout: float = 120) -> Path:
    """A PNG of the top ``width`` × ``height`` pixels of the report as Chromium draws it; of the
    report's ``section`` alone (its id, e.g. ``features``) when given."""
    png = Path(png).resolve()
    png.parent.mkdir(parents=True, exist_ok=True)
    page = Path(report).read_text(encoding="utf-8")
    with tempfile.TemporaryDirectory(prefix="report-shot-") as folder:
        copy = Path(folder) / "report.html"
        copy.write_text(one_section(page, section) if section else page, encoding="utf-8")
        done = subprocess.run([_chromium(chromium), *FLAGS, f"--user-data-dir={folder}/profile",
                               f"--window-size={width},{height}", "--virtual-time-budget=5000",
                               f"--screenshot={png}", copy.as_uri()], capture_output=True, text=True, timeout=timeout)
    if not png.exists():
        raise RuntimeError(f"Chromium wrote no screenshot (exit {done.returncode}):\n{done.stderr[-2000:]}")
    return png


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="open the report and report what is wrong (exit 1 if anything)")
    check.add_argument("report", type=Path)
    shot = commands.add_parser("screenshot", help="a PNG of the report")
    shot.add_argument("report", type=Path)
    shot.add_argument("png", type=Path)
    shot.add_argument("--section", help="show this section alone (its id, e.g. features), its first card open")
    shot.add_argument("--width", type=int, default=1200)
    shot.add_argument("--height", type=int, default=1600)
    args = parser.parse_args(argv)
    if not args.report.is_file():
        parser.error(f"{args.report} is not a file")
    if args.command == "screenshot":
        print(screenshot(args.report, args.png, section=args.section, width=args.width, height=args.height))
        return 0
    result = check_report(args.report)
    print(f"{len(result.sections)} sections, {result.cards} feature cards, sorted by "
          f"{', '.join(result.sorted_columns) or 'no column'}")
    for failure in result.failures:
        print(failure)
    print("ok" if result.ok else f"{len(result.failures)} problem(s)")
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
