"""Plot: plotly figures drawn from the records the analyses write."""
