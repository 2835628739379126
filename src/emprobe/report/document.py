"""``Report``: a self-contained offline HTML page of sections, figures, tables and notes.

plotly.js is embedded once in the page head; each figure is a ``<div>`` plus a
small script, so the file opens offline in any browser and stays one file.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import plotly.graph_objects as go
from plotly.basedatatypes import BaseFigure
from plotly.offline import get_plotlyjs

from emprobe._version import __version__
from emprobe.errors import ConfigError, DataError
from emprobe.io import atomic_path
from emprobe.plot.records import RecordsLike, get, load_records
from emprobe.plot.save import figure_html, make_readable
from emprobe.report.markup import cell, inline, is_number, paragraphs, slug
from emprobe.report.notes import NOTE_KINDS, SignificanceNote
from emprobe.report.theme import CSS

Columns = Sequence[str] | Mapping[str, str] | None


@dataclass
class _Section:
    title: str
    anchor: str
    blocks: list[str] = field(default_factory=list)


class Report:
    """Build an HTML report block by block, then ``save`` it.

    Example::

        report = Report("emprobe demo", subtitle="SmolLM2-135M-Instruct, 2 CPU cores")
        report.meta({"model": "smollm2-135m-instruct", "seeds": [0], "n_train": 80})
        report.section("Misalignment", "Local score of base and fine-tunes.")
        report.figure(plot.score_bars(records), caption="Per-answer margin, 95% intervals.")
        report.note(significance_note(lo, hi, what="the fine-tune's shift"))
        report.table(records, columns={"model": "model", "mean": "margin"})
        report.save("out/report.html")

    Every method returns the report, so calls can be chained.
    """

    def __init__(self, title: str, subtitle: str | None = None, toc: bool = True) -> None:
        self.title = title
        self.subtitle = subtitle
        self.toc = toc
        self._meta: dict[str, object] = {}
        self._anchors: set[str] = set()
        self._intro = _Section(title="", anchor="")
        self._sections: list[_Section] = []
        self._n_figures = 0
        self._n_tables = 0

    # -- building ---------------------------------------------------------------------------

    @property
    def _current(self) -> _Section:
        return self._sections[-1] if self._sections else self._intro

    def section(self, title: str, text: str | None = None) -> Report:
        """Start a new section (listed in the table of contents), with optional prose."""
        if not str(title).strip():
            raise ConfigError("Report.section: a section needs a title")
        self._sections.append(_Section(title=str(title), anchor=slug(str(title), self._anchors)))
        if text:
            self.text(text)
        return self

    def text(self, text: str) -> Report:
        """Prose in the current section (blank lines split paragraphs; ``- `` bullets;
        ``**bold**`` and `` `code` `` inline; everything else is escaped)."""
        self._current.blocks.append(paragraphs(str(text)))
        return self

    def figure(self, fig: BaseFigure | Mapping[str, object], caption: str | None = None) -> Report:
        """A plotly figure (or its JSON dict), numbered, with a caption."""
        if isinstance(fig, Mapping):
            fig = go.Figure(fig)
        if not isinstance(fig, BaseFigure):  # go.Figure or go.FigureWidget
            raise DataError(f"Report.figure: expected a plotly Figure, got {type(fig).__name__}")
        self._n_figures += 1
        n = self._n_figures
        div = figure_html(fig, include_plotlyjs=False, full_html=False, div_id=f"figure-{n}")
        cap = f"<figcaption><b>Figure {n}.</b> {inline(caption)}</figcaption>" if caption else ""
        self._current.blocks.append(
            f'<figure id="fig-{n}"><div class="plot">{div}</div>{cap}</figure>'
        )
        return self

    def table(
        self,
        records: RecordsLike,
        columns: Columns = None,
        caption: str | None = None,
        max_rows: int = 200,
        digits: int = 4,
    ) -> Report:
        """A table of records. ``columns``: keys to show (dotted keys reach into nested
        dicts), or ``{key: header}``; default all keys of the first record, in order."""
        rows = load_records(records, "Report.table")
        if not rows:
            # An empty result is still a result: say so instead of failing the whole report.
            self._n_tables += 1
            cap = (f'<div class="table-caption"><b>Table {self._n_tables}.</b> {inline(caption)}'
                   "</div>" if caption else "")
            self._current.blocks.append(
                f'<div class="table-wrap" id="table-{self._n_tables}">{cap}'
                '<div class="table-more">No rows.</div></div>'
            )
            return self
        if isinstance(columns, Mapping):
            keys, headers = list(columns), [str(v) for v in columns.values()]
        elif columns is not None:
            keys = [str(c) for c in columns]
            headers = keys
        else:
            keys = []
            for r in rows:
                keys.extend(k for k in r if k not in keys)
            headers = keys
        if not keys:
            raise DataError("Report.table: no columns to show")
        self._n_tables += 1
        numeric = [
            all(is_number(get(r, k, None)) or get(r, k, None) is None for r in rows)
            and any(is_number(get(r, k, None)) for r in rows)
            for k in keys
        ]
        head = "".join(
            f'<th class="{"num" if num else ""}">{html.escape(h)}</th>' for h, num in zip(headers, numeric)
        )
        body = []
        for r in rows[:max_rows]:
            tds = "".join(
                f'<td class="{"num" if num else ""}">{cell(get(r, k, None), digits)}</td>'
                for k, num in zip(keys, numeric)
            )
            body.append(f"<tr>{tds}</tr>")
        cap = (f'<div class="table-caption"><b>Table {self._n_tables}.</b> {inline(caption)}</div>'
               if caption else "")
        more = (f'<div class="table-more">… {len(rows) - max_rows} more rows not shown</div>'
                if len(rows) > max_rows else "")
        self._current.blocks.append(
            f'<div class="table-wrap" id="table-{self._n_tables}">{cap}<table><thead><tr>{head}'
            f"</tr></thead><tbody>{''.join(body)}</tbody></table>{more}</div>"
        )
        return self

    def raw_html(self, fragment: str) -> Report:
        """A trusted HTML fragment, inserted as is (e.g. a table another module rendered).

        Keep it self-contained: no ``<script src>`` or external links, or the report stops
        working offline."""
        self._current.blocks.append(str(fragment))
        return self

    def note(self, text: str | SignificanceNote, kind: str | None = None) -> Report:
        """A highlighted note: ``kind="info"`` or ``"warning"`` (e.g. "this effect is not
        significant"). A :class:`SignificanceNote` brings its own kind."""
        if isinstance(text, SignificanceNote):
            kind = kind or text.kind
            text = text.text
        kind = kind or "info"
        if kind not in NOTE_KINDS:
            raise ConfigError(f"Report.note: kind must be one of {NOTE_KINDS}, not {kind!r}")
        label = "Note" if kind == "info" else "Caution"
        self._current.blocks.append(
            f'<div class="note {kind}" role="note"><span class="label">{label}:</span>'
            f"{inline(str(text))}</div>"
        )
        return self

    def meta(self, info: Mapping[str, object]) -> Report:
        """Provenance shown under the title: model, data sizes, seeds, timings ... (merged)."""
        if not isinstance(info, Mapping):
            raise DataError(f"Report.meta: expected a dict, got {type(info).__name__}")
        self._meta.update({str(k): v for k, v in info.items()})
        return self

    # -- output -----------------------------------------------------------------------------

    def _meta_html(self) -> str:
        if not self._meta:
            return ""
        items = []
        for k, v in self._meta.items():
            if isinstance(v, (dict, list, tuple)):
                dumped = json.dumps(v, default=str, ensure_ascii=False)
                if len(dumped) > 90:
                    dumped = json.dumps(v, indent=1, default=str, ensure_ascii=False)
                val = f"<pre>{html.escape(dumped, quote=False)}</pre>"
            else:
                val = cell(v)
            items.append(f"<dt>{html.escape(k)}</dt><dd>{val}</dd>")
        return f'<dl class="meta">{"".join(items)}</dl>'

    def _toc_html(self) -> str:
        if not self.toc or not self._sections:
            return ""
        items = "".join(
            f'<li><a href="#{s.anchor}">{html.escape(s.title)}</a></li>' for s in self._sections
        )
        cls = "toc long" if len(self._sections) > 6 else "toc"
        return f'<nav class="{cls}"><h2>Contents</h2><ol>{items}</ol></nav>'

    def to_html(self) -> str:
        """The whole page as one string (plotly.js embedded once, only if there are figures)."""
        script = (f'<script type="text/javascript">{get_plotlyjs()}</script>'
                  if self._n_figures else "")
        sections = [
            f'<section id="{s.anchor}"><h2><span class="num">{i}.</span>{html.escape(s.title)}</h2>'
            + "\n".join(s.blocks) + "</section>"
            for i, s in enumerate(self._sections, start=1)
        ]
        stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        subtitle = f'<p class="subtitle">{inline(self.subtitle)}</p>' if self.subtitle else ""
        return (
            "<!DOCTYPE html>\n"
            '<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<meta name="generator" content="emprobe {__version__}">'
            f"<title>{html.escape(self.title)}</title><style>{CSS}</style>{script}</head>\n"
            f'<body><main><header class="report-head"><h1>{html.escape(self.title)}</h1>'
            f"{subtitle}{self._meta_html()}</header>\n{self._toc_html()}\n"
            + "\n".join(self._intro.blocks)
            + "\n".join(sections)
            + f"<footer>Generated by emprobe {__version__} on {stamp}. Every number on this page "
            "was computed in the run described above.</footer></main></body></html>\n"
        )

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the report atomically; returns the path."""
        target = Path(path)
        if target.suffix.lower() not in (".html", ".htm"):
            raise DataError(f"Report.save: {target} should end in .html")
        text = self.to_html()
        with atomic_path(target) as tmp:
            tmp.write_text(text, encoding="utf-8")
            make_readable(tmp)
        return target
