"""Report: self-contained HTML reports assembled from figures and records."""
