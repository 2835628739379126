"""Report: self-contained HTML reports assembled from figures and records.

One file, readable offline: plotly.js is embedded once in the page head, the CSS
is inline and nothing is fetched. Imports ``emprobe.plot``, ``emprobe.io`` and
``emprobe.errors`` only.

Example::

    from emprobe.report import Report, significance_note
    report = Report("CAFT on bad medical advice").meta({"model": "smollm2-135m-instruct"})
    report.section("Result", "Misalignment after retraining with ablation.")
    report.figure(fig, caption="Trade-off: lower left is better.")
    report.note(significance_note(-0.4, 0.9, what="the change in margin"))
    report.save("out/report.html")
"""

from emprobe.report.document import Report
from emprobe.report.notes import SignificanceNote, significance_note

__all__ = ["Report", "SignificanceNote", "significance_note"]
