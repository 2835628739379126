"""Report: one offline file, plotly.js once, TOC, tables, notes, meta, atomic save."""

from __future__ import annotations

import os
import re
from html.parser import HTMLParser

import pytest
from plotly.offline import get_plotlyjs

from emprobe import plot
from emprobe.errors import ConfigError, DataError
from emprobe.report import Report, significance_note


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def _tags(text: str) -> list[tuple[str, dict]]:
    p = _Tags()
    p.feed(text)
    return p.tags


def _report() -> Report:
    r = Report("EM demo", subtitle="tiny-llama, **quick** mode")
    r.meta({"model": "tiny-llama", "seeds": [0, 1], "n_train": 80, "timings_s": {"train": 1.5}})
    r.section("Scores", "Local score of base and fine-tunes.\n\n- base\n- fine-tune")
    r.figure(plot.score_bars([{"model": "base", "mean": -1.0, "lo": -2.0, "hi": 0.5}]),
             caption="Margins with 95% intervals.")
    r.note(significance_note(-2.0, 0.5, what="the base margin"))
    r.section("Geometry")
    r.figure(plot.heatmap([[1.0, 0.4], [0.4, 1.0]], ["a", "b"]), caption="Cosine.")
    r.figure(plot.layer_curves([{"layer": 0, "value": 1.0}, {"layer": 1, "value": 2.0}]))
    r.section("Scores")  # a repeated title still gets its own anchor
    r.table([{"model": "base", "mean": -1.234567, "n": 12000, "ok": True, "x": None}])
    return r


def test_report_is_self_contained_with_plotlyjs_once(tmp_path):
    path = _report().save(tmp_path / "out" / "report.html")
    text = path.read_text(encoding="utf-8")
    assert text.count(get_plotlyjs()) == 1
    assert not re.search(r"<script[^>]*\bsrc=", text)
    assert not [a for t, a in _tags(text) if t == "link"]  # no external stylesheets / fonts
    divs = [a["id"] for t, a in _tags(text) if t == "div" and a.get("id", "").startswith("figure-")]
    assert divs == ["figure-1", "figure-2", "figure-3"]
    assert text.count("Plotly.newPlot") == 3


def test_report_without_figures_does_not_embed_plotlyjs():
    text = Report("t").section("a", "b").to_html()
    assert get_plotlyjs() not in text and "<script" not in text


def test_toc_sections_captions_meta_and_notes():
    text = _report().to_html()
    toc = re.search(r'<nav class="toc">(.*?)</nav>', text, re.S).group(1)
    assert re.findall(r'href="#([^"]+)"', toc) == ["scores", "geometry", "scores-2"]
    ids = [a.get("id") for t, a in _tags(text) if t == "section"]
    assert ids == ["scores", "geometry", "scores-2"]
    assert "<b>Figure 1.</b> Margins with 95% intervals." in text
    assert "<b>Figure 2.</b> Cosine." in text
    assert "<dt>model</dt><dd>tiny-llama</dd>" in text and "<dt>n_train</dt><dd>80</dd>" in text
    assert '"train": 1.5' in text  # nested meta shown as JSON
    assert '<div class="note warning"' in text and "Not significant" in text
    assert "<ul><li>base</li><li>fine-tune</li></ul>" in text
    assert "<strong>quick</strong>" in text


def test_table_formats_numbers_and_escapes_text():
    r = Report("t").section("s")
    r.table([{"name": "<b>x</b>", "v": 1.23456789, "n": 123456, "flag": False, "nest": {"a": 1}},
             {"name": "y", "v": float("nan"), "n": 2, "flag": True, "nest": None}],
            caption="Two rows.")
    text = r.to_html()
    assert "&lt;b&gt;x&lt;/b&gt;" in text and "<b>x</b>" not in text
    assert '<td class="num">1.235</td>' in text and '<td class="num">123,456</td>' in text
    assert '<td class="num">—</td>' in text and "<td class=\"\">no</td>" in text
    assert "<b>Table 1.</b> Two rows." in text


def test_table_columns_as_list_or_mapping_with_dotted_keys():
    rows = [{"model": "ft", "per_answer": {"mean": 1.5, "lo": 0.5, "hi": 2.5}}]
    text = Report("t").table(rows, columns={"model": "Model", "per_answer.mean": "Margin"}).to_html()
    head = re.search(r"<thead>(.*?)</thead>", text).group(1)
    assert re.findall(r"<th[^>]*>([^<]*)</th>", head) == ["Model", "Margin"]
    assert ">1.5</td>" in text
    text2 = Report("t").table(rows, columns=["model"]).to_html()
    assert "Margin" not in text2 and ">ft</td>" in text2
    many = Report("t").table([{"i": i} for i in range(5)], max_rows=2).to_html()
    assert "3 more rows not shown" in many


def test_figure_accepts_a_figure_or_its_dict():
    fig = plot.layer_curves([{"layer": 0, "value": 1.0}])
    a = Report("t").figure(fig).to_html()
    b = Report("t").figure(fig.to_dict()).to_html()
    assert a.count("Plotly.newPlot") == b.count("Plotly.newPlot") == 1
    with pytest.raises(DataError, match="expected a plotly Figure"):
        Report("t").figure("not a figure")


def test_bad_calls_raise_one_line_errors(tmp_path):
    r = Report("t")
    with pytest.raises(ConfigError, match="kind must be one of"):
        r.note("x", kind="danger")
    with pytest.raises(ConfigError, match="needs a title"):
        r.section("  ")
    with pytest.raises(DataError, match="expected a dict"):
        r.meta(["model"])
    with pytest.raises(DataError, match="should end in .html"):
        r.save(tmp_path / "report.txt")
    with pytest.raises(DataError, match="expected a list of records"):
        r.table({"model": "base"})


def test_empty_table_says_no_rows_and_raw_html_is_kept():
    text = Report("t").table([], caption="Nothing.").raw_html("<p class='x'>kept</p>").to_html()
    assert "No rows." in text and "<b>Table 1.</b> Nothing." in text
    assert "<p class='x'>kept</p>" in text


def test_save_is_atomic_and_replaces_a_previous_report(tmp_path, monkeypatch):
    target = tmp_path / "report.html"
    target.write_text("old report")

    def boom(self):
        raise RuntimeError("rendering failed")

    monkeypatch.setattr(Report, "to_html", boom)
    with pytest.raises(RuntimeError):
        Report("t").save(target)
    assert target.read_text() == "old report"
    monkeypatch.undo()
    Report("new").section("a", "b").save(target)
    assert "<title>new</title>" in target.read_text()
    mask = os.umask(0)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask  # not mkstemp's 0600
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]


def test_chaining_and_intro_blocks_before_any_section():
    r = Report("t", toc=False).text("Before sections.").note("Heads up.", kind="warning")
    text = r.section("A").text("inside").to_html()
    assert text.index("Before sections.") < text.index('id="a"')
    assert '<nav class="toc">' not in text
