"""Heatmaps: adapter-by-adapter and concept-by-concept similarity matrices."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, TypeAlias

import plotly.graph_objects as go

from emprobe.errors import ConfigError, ShapeError
from emprobe.plot.records import RecordsLike, get, load_records, number, require
from emprobe.plot.style import DIVERGING_SCALE, SEQUENTIAL_SCALE, apply_style

if TYPE_CHECKING:
    import numpy as np
    import torch

Matrix: TypeAlias = "Sequence[Sequence[float | None]] | np.ndarray | torch.Tensor"
"""A 2-D table of numbers: nested lists (None = a gap), a numpy array or a torch tensor."""


def _as_rows(matrix: object) -> list[list[float]]:
    tolist = getattr(matrix, "tolist", None)
    if tolist is not None:  # numpy arrays, torch tensors
        matrix = tolist()
    if not isinstance(matrix, Sequence) or not matrix:
        raise ShapeError("heatmap: matrix must be a non-empty 2-D list / array")
    rows = []
    for i, row in enumerate(matrix):
        if not isinstance(row, Sequence):
            raise ShapeError(f"heatmap: row {i} is not a sequence (matrix must be 2-D)")
        rows.append([math.nan if v is None else float(v) for v in row])
    width = len(rows[0])
    for i, row in enumerate(rows):
        if len(row) != width:
            raise ShapeError(f"heatmap: row {i} has {len(row)} columns, row 0 has {width}")
    return rows


def heatmap(
    matrix: Matrix,
    labels: Sequence[str],
    title: str | None = None,
    zmin: float | None = None,
    zmax: float | None = None,
    x_labels: Sequence[str] | None = None,
    colorscale: str | None = None,
    annotate: bool | None = None,
    value_name: str = "value",
    fmt: str = ".2f",
) -> go.Figure:
    """A labelled heatmap of ``matrix`` ``[n_rows, n_cols]`` (lists, numpy or torch).

    ``labels`` name the rows (and the columns unless ``x_labels`` is given). With
    ``zmin < 0`` a diverging colour scale centred on 0 is used (cosines), otherwise
    a sequential one (overlaps, |cos|). Cells are annotated with their value when
    the matrix is at most 12 x 12 (``annotate`` overrides). Row 0 is drawn at the top.
    """
    rows = _as_rows(matrix)
    cols = list(x_labels) if x_labels is not None else list(labels)
    if len(labels) != len(rows):
        raise ShapeError(f"heatmap: {len(labels)} row labels for {len(rows)} rows")
    if len(cols) != len(rows[0]):
        raise ShapeError(f"heatmap: {len(cols)} column labels for {len(rows[0])} columns")
    finite = [v for r in rows for v in r if not math.isnan(v)]
    lo = zmin if zmin is not None else (min(finite) if finite else 0.0)
    hi = zmax if zmax is not None else (max(finite) if finite else 1.0)
    if lo > hi:
        raise ConfigError(f"heatmap: zmin {lo} > zmax {hi}")
    signed = lo < 0 < hi
    scale = colorscale or (DIVERGING_SCALE if signed else SEQUENTIAL_SCALE)
    if annotate is None:
        annotate = len(rows) <= 12 and len(cols) <= 12
    text = [[("" if math.isnan(v) else format(v, fmt)) for v in r] for r in rows]
    trace = go.Heatmap(
        z=rows,
        x=[str(c) for c in cols],
        y=[str(r) for r in labels],
        zmin=lo,
        zmax=hi,
        zmid=0.0 if signed else None,
        colorscale=scale,
        text=text if annotate else None,
        texttemplate="%{text}" if annotate else None,
        hovertemplate=f"%{{y}} × %{{x}}<br>{value_name} %{{z:{fmt}}}<extra></extra>",
        colorbar={"title": {"text": value_name, "side": "right"}, "thickness": 14},
        xgap=1,
        ygap=1,
    )
    fig = go.Figure(trace)
    side = max(360, min(760, 140 + 48 * max(len(rows), len(cols))))
    apply_style(fig, title=title, height=side, width=side + 120)
    fig.update_yaxes(autorange="reversed", showgrid=False, ticks="")
    fig.update_xaxes(showgrid=False, ticks="", tickangle=-30 if len(cols) > 4 else 0)
    return fig


def matrix_from_records(
    records: RecordsLike,
    row: str = "a",
    col: str = "b",
    value: str = "value",
    symmetric: bool = True,
    diagonal: float | None = None,
) -> tuple[list[list[float]], list[str], list[str]]:
    """Pairwise records -> ``(matrix, row_labels, col_labels)`` for :func:`heatmap`.

    Record shape: ``{"a": "medical", "b": "sports", "value": 0.71}``. With
    ``symmetric`` each pair fills both cells and rows = columns; ``diagonal`` fills
    the unset diagonal (e.g. 1.0 for cosine). Unset cells are NaN (blank).
    """
    rows = load_records(records, "matrix_from_records")
    require(rows, [row, col, value], "matrix_from_records")
    row_names: list[str] = []
    col_names: list[str] = []
    for r in rows:
        a, b = str(get(r, row)), str(get(r, col))
        if a not in row_names:
            row_names.append(a)
        if b not in col_names:
            col_names.append(b)
    if symmetric:
        names = row_names + [c for c in col_names if c not in row_names]
        row_names = col_names = names
    m = [[math.nan] * len(col_names) for _ in row_names]
    for r in rows:
        a, b = str(get(r, row)), str(get(r, col))
        v = number(r, value, "matrix_from_records")
        m[row_names.index(a)][col_names.index(b)] = v
        if symmetric:
            m[row_names.index(b)][col_names.index(a)] = v
    if diagonal is not None:
        for i, name in enumerate(row_names):
            if name in col_names and math.isnan(m[i][col_names.index(name)]):
                m[i][col_names.index(name)] = diagonal
    return m, row_names, col_names
