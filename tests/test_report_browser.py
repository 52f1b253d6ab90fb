"""The report shell in a real browser (headless Chromium): a good page passes the check, a page
with a script error, a broken image, an empty section, a dead link, a table that does not sort
or a value printed as a Python repr fails it; screenshots are drawn. The pipeline's own report
is checked in tests/test_pipeline.py."""

import matplotlib.image
import pytest

from refusal_lens.report import Cell, ReportSection, img, save_figure, subplots, table, write_report
from scripts.report_browser import check_report, find_chromium, python_reprs, screenshot

needs_chromium = pytest.mark.skipif(find_chromium() is None, reason=(
    "Chromium is not installed here (Debian package `chromium`; .ci/run installs it), so the report cannot be "
    "opened in a browser"))


def figure(folder):
    fig, ax = subplots(figsize=(3, 2))
    ax.plot([0, 1, 2], [1, 0, 2])
    return save_figure(fig, folder, "line")


def good_sections(folder):
    rows = [[Cell('<a href="#card-1-2">L1:2</a>', 10000002), Cell("+0.300", 0.3), "b"],
            [Cell('<a href="#card-2-5">L2:5</a>', 20000005), Cell("–", ""), "a"],
            [Cell('<a href="#card-1-9">L1:9</a>', 10000009), Cell("-0.100", -0.1), "c"]]
    cards = "".join(f'<details class="card" id="card-{k}"><summary>{k}</summary><p>card {k}</p></details>'
                    for k in ("1-2", "2-5", "1-9"))
    return [ReportSection("Numbers", table([[1, 2.5, None, True]], ["a", "b", "c", "d"])),
            ReportSection("A figure", img(figure(folder), "a line")),
            ReportSection("Features", table(rows, ["feature", "cosine", "name"], sortable=True, id="feature-table")
                          + cards)]


def write(folder, sections):
    return write_report(folder, model="tiny", saes="folder", created="2026-12-01T00:00:00+00:00", sections=sections,
                        cost={"direction": {"forward_passes": 3, "wall_time_s": 0.25}}, versions={"torch": "2"})


def test_cells_never_print_reprs(tmp_path):
    page = write(tmp_path, good_sections(tmp_path)).read_text()
    assert "<td>n/a</td>" in page and "<td>yes</td>" in page and python_reprs(page) == []
    with pytest.raises(TypeError, match="format it first"):
        table([[{"a": 1}]], ["x"])


def test_python_reprs_are_found_outside_verbatim_text():
    page = ("<html><head><style>a{b:c}</style><script>var x = {'a': None};</script></head><body>"
            "<p>rate None, {'shared': 1.0}, [(14, 345)] and nan</p><img src='x.png'>"
            "<td><span class='data'>The prompt says None and ['x']</span> after</td></body></html>")
    found = python_reprs(page)
    assert {f.split(":")[0] for f in found} == {"None", "dict", "tuple", "nan/inf"}
    assert all("prompt says" not in f for f in found)
    assert python_reprs("<p>(∩ seeds) 100%, n/a, –</p>") == []


@needs_chromium
def test_a_good_report_passes_the_browser_check(tmp_path):
    result = check_report(write(tmp_path, good_sections(tmp_path)))
    assert result.ok, result.failures
    assert result.sections == ["Numbers", "A figure", "Features", "Cost", "Versions"]
    assert result.sorted_columns == ["feature", "cosine"] and result.cards == 3 and result.card_opened is True


@needs_chromium
def test_each_kind_of_problem_fails_the_browser_check(tmp_path):
    sections = [*good_sections(tmp_path),
                ReportSection("Broken image", img("bm90IGEgcG5n", "broken figure")),
                ReportSection("Empty", "<p> </p>"),
                ReportSection("Script error", "<p>text</p><script>undefinedFunction();</script>"),
                ReportSection("Console", "<p>text</p><script>console.error('bad value');</script>"),
                ReportSection("Dead link", '<p><a href="#nowhere">a card</a></p>'),
                ReportSection("Repr", "<p>rate None</p>"),
                ReportSection("No sorting", "<p>x</p><script>sortTable = function () {};</script>")]
    result = check_report(write(tmp_path, sections))
    assert result.broken_images == ["broken figure"]
    assert result.empty_sections == ["Empty"]
    assert any("undefinedFunction" in p for p in result.problems)
    assert any("console.error: bad value" in p for p in result.problems) and result.console
    assert result.dead_links == ["#nowhere"]
    assert len(result.reprs) == 1 and "None" in result.reprs[0]
    assert "feature (ascending)" in result.sort_failures
    assert not result.ok and len(result.failures) >= 8


@needs_chromium
def test_screenshots_of_the_top_and_of_one_section(tmp_path):
    report = write(tmp_path, good_sections(tmp_path))
    top = matplotlib.image.imread(screenshot(report, tmp_path / "top.png", width=800, height=600))
    assert top.shape[:2] == (600, 800) and top.min() < 0.5  # something is drawn, not a blank page
    features = matplotlib.image.imread(screenshot(report, tmp_path / "features.png", section="features",
                                                  width=800, height=600))
    assert features.shape[:2] == (600, 800) and features.min() < 0.5
    with pytest.raises(ValueError, match="no section 'nope'"):
        screenshot(report, tmp_path / "x.png", section="nope")
