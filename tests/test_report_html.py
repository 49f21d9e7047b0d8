"""report.html: report.md's content as one self-contained page, checked in headless Chromium
(Debian's `chromium`; skipped with the reason when it is missing), with a screenshot kept."""

from __future__ import annotations

import re

import pytest
import yaml
from PIL import Image

from pipeline import browser, report_html
from pipeline.config import load_config, validate
from pipeline.layout import ResultsLayout
from tests.test_report import aggregate_and_report, full  # noqa: F401  (the synthetic sweep fixture)

needs_chromium = pytest.mark.skipif(browser.find_chromium() is None,
                                    reason="no chromium on PATH (make test-tools installs Debian's package)")


def test_the_page_has_report_md_content_and_fetches_nothing(full):  # noqa: F811
    sweep_dir, written = full
    text, page = (sweep_dir / "report.md").read_text(), (sweep_dir / "report.html").read_text()
    assert written["report_html"] == sweep_dir / "report.html"
    for heading in re.findall(r"^#{2,3} (.+)$", text, re.M):  # every section, in the same order
        assert f">{heading.replace('&', '&amp;')}</h" in page, heading
    rows = [r for r in re.findall(r"^\|(.+)\|$", text, re.M) if not set(r) <= set("-|")]
    assert page.count("<tr>") == len(rows) > 0  # every table row, header rows included
    for row in rows:
        for cell in (c.strip() for c in row.split("|")):
            if re.fullmatch(r"[\w.+ -]+", cell):  # plain cells (no markup): shown as they are
                assert f"<td>{cell}</td>" in page or f"<th>{cell}</th>" in page, (row, cell)
    figures = sorted(k for k in written if k.startswith("figure:"))
    assert page.count('<img src="data:image/png;base64,') == len(re.findall(r"!\[", text)) > 0 and figures
    assert not re.search(r"""(src|href)=["'](?!data:|#)""", page)  # nothing to fetch, no file links
    assert "Content-Security-Policy" in page and "default-src 'none'" in page
    sections = ("The paper's claims", "Directional sharpness ratio", "How this report was made")
    order = [page.index(h) for h in sections]
    assert order == sorted(order)  # the claims first, how it was made last
    assert f"python -m pipeline aggregate {sweep_dir}" in page and "<td>pyarrow</td>" in page


def test_the_report_shows_the_config_that_reruns_the_sweep(tmp_path):
    config = load_config("conf/smoke.yaml", [f"results_dir={tmp_path}"])
    layout = config.layout
    from tests.test_report import write_convergence

    write_convergence(layout.sweep_dir)
    layout.write_config(config.to_yaml())
    aggregate_and_report(layout.sweep_dir)
    text = layout.report_path.read_text()
    assert f"python -m pipeline sweep {layout.config_path}" in text
    shown = text.split("```yaml\n")[1].split("```")[0]
    again = validate(yaml.safe_load(shown))  # the shown config is the sweep's, trial for trial
    assert [t.to_json() for t in again.trials] == [t.to_json() for t in config.trials]


@needs_chromium
def test_chromium_loads_every_figure_and_keeps_a_screenshot(full):  # noqa: F811
    sweep_dir, written = full
    layout = ResultsLayout(sweep_dir)
    images = report_html.image_status(layout.report_html_path)
    assert len(images) == sum(k.startswith("figure:") for k in written) > 0
    assert all(i["complete"] and i["width"] > 200 for i in images), images
    shot = report_html.screenshot(layout.report_html_path, layout.report_screenshot_path)
    assert shot == sweep_dir / "report.png"
    with Image.open(shot) as image:
        assert image.size == (1366, 900)
        assert len(image.convert("L").getcolors(256)) > 10  # text and tables drawn, not a blank page


@needs_chromium
def test_a_figure_that_is_not_inlined_shows_as_broken(tmp_path):
    page = tmp_path / "report.html"
    report_html.write_html(page, "# t\n\n![lost](figures/lost.png)\n", {"lost": tmp_path / "missing.png"})
    assert [(i["alt"], i["width"]) for i in report_html.image_status(page)] == [("lost", 0)]
