"""The report's stylesheet: one inline CSS block (no web fonts, nothing fetched)."""

from __future__ import annotations

from emprobe.plot.style import FONT_FAMILY, MONO_FAMILY, TEXT_COLOR

CSS = f"""
:root {{
  --text: {TEXT_COLOR};
  --muted: #5b6270;
  --rule: #e3e6ec;
  --soft: #f6f7f9;
  --accent: #2b6cb0;
  --info-bg: #eef5fc; --info-edge: #2b6cb0;
  --warn-bg: #fdf4e7; --warn-edge: #dd8a1e;
}}
* {{ box-sizing: border-box; }}
html {{ -webkit-text-size-adjust: 100%; }}
body {{
  margin: 0; color: var(--text); background: white;
  font-family: {FONT_FAMILY}; font-size: 16px; line-height: 1.6;
}}
main {{ max-width: 980px; margin: 0 auto; padding: 40px 28px 80px; }}
header.report-head h1 {{ font-size: 2.0rem; line-height: 1.2; margin: 0 0 6px; letter-spacing: -0.01em; }}
header.report-head p.subtitle {{ color: var(--muted); margin: 0 0 18px; font-size: 1.05rem; }}
h2 {{ font-size: 1.4rem; margin: 2.6rem 0 0.8rem; padding-top: 0.8rem; border-top: 1px solid var(--rule); }}
h2 .num {{ color: var(--muted); font-weight: 500; margin-right: 0.4em; }}
p {{ margin: 0.6rem 0; }}
ul {{ margin: 0.4rem 0 0.8rem; padding-left: 1.4rem; }}
a {{ color: var(--accent); text-decoration: none; }}
a:hover {{ text-decoration: underline; }}
code {{ font-family: {MONO_FAMILY}; font-size: 0.88em; background: var(--soft);
        padding: 0.08em 0.32em; border-radius: 4px; }}
nav.toc {{ background: var(--soft); border: 1px solid var(--rule); border-radius: 8px;
           padding: 14px 20px; margin: 18px 0 8px; }}
nav.toc h2 {{ font-size: 0.95rem; text-transform: uppercase; letter-spacing: 0.06em;
              color: var(--muted); margin: 0 0 6px; padding: 0; border: 0; }}
nav.toc ol {{ margin: 0; padding-left: 1.3rem; }}
nav.toc.long ol {{ columns: 2; column-gap: 32px; }}
nav.toc li {{ break-inside: avoid; margin: 2px 0; }}
dl.meta {{ display: grid; grid-template-columns: max-content 1fr; gap: 4px 18px;
           margin: 12px 0 6px; font-size: 0.92rem; }}
dl.meta dt {{ color: var(--muted); }}
dl.meta dd {{ margin: 0; font-variant-numeric: tabular-nums; word-break: break-word; }}
dl.meta dd pre {{ margin: 0; font-family: {MONO_FAMILY}; font-size: 0.85em; white-space: pre-wrap; }}
figure {{ margin: 1.4rem 0 1.8rem; }}
figure .plot {{ overflow-x: auto; }}
figcaption {{ color: var(--muted); font-size: 0.92rem; margin-top: 6px; }}
figcaption b {{ color: var(--text); }}
.table-wrap {{ overflow-x: auto; margin: 1rem 0 1.4rem; }}
table {{ border-collapse: collapse; font-size: 0.9rem; font-variant-numeric: tabular-nums; }}
th, td {{ padding: 5px 12px; border-bottom: 1px solid var(--rule); text-align: left;
          vertical-align: top; }}
th {{ font-weight: 600; border-bottom: 2px solid #c9ced8; white-space: nowrap; }}
td.num, th.num {{ text-align: right; }}
tbody tr:nth-child(even) {{ background: #fafbfc; }}
.table-caption {{ color: var(--muted); font-size: 0.92rem; margin-bottom: 4px; }}
.table-more {{ color: var(--muted); font-size: 0.85rem; margin-top: 4px; }}
.note {{ border-left: 4px solid var(--info-edge); background: var(--info-bg);
         padding: 10px 14px; margin: 1rem 0; border-radius: 0 6px 6px 0; }}
.note.warning {{ border-left-color: var(--warn-edge); background: var(--warn-bg); }}
.note .label {{ font-weight: 600; margin-right: 0.4em; }}
footer {{ color: var(--muted); font-size: 0.82rem; margin-top: 3rem; padding-top: 1rem;
          border-top: 1px solid var(--rule); }}
@media print {{
  main {{ max-width: none; padding: 0; }}
  nav.toc {{ break-after: page; }}
  figure, .table-wrap, .note {{ break-inside: avoid; }}
}}
"""
