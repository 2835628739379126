"""Checkpoint series: the local EM score and the LoRA geometry along a training run.

``emprobe eval series RUN_DIR`` finds the saved adapters of a run, in step order:

- emprobe's trainer layout ``RUN_DIR/checkpoints/step-000040/adapter/``;
- the Hugging Face trainer's ``RUN_DIR/checkpoint-40/`` (``adapter_config.json`` inside);
- any folder of PEFT adapter folders (steps from the trailing number of each name, else
  their order).

For every checkpoint it computes

- the **local score** (``emprobe.evaluate.local.local_score``) and its paired shift against
  the reference (the base model without adapter, or the first checkpoint), with the
  paired t interval over questions and p-value (``emprobe.evaluate.local.compare``);
- the **norm** of the update, ``sqrt(sum over modules ||s B A||_F^2)``, from the factors;
- the **rotation** of each module's top left singular vector (the direction the update
  writes most) since the previous checkpoint, ``arccos |u_prev . u|`` in degrees, averaged
  over modules (and the largest).

The first step whose shift is significant is marked: its Holm-adjusted p-value (across the
checkpoints) is below ``alpha`` and the shift is positive (towards the misaligned answers).
Outputs: ``series.json`` and ``series.html`` (three panels against the step).
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from emprobe.errors import DataError
from emprobe.evaluate.local import LocalScore, compare, local_score
from emprobe.evaluate.questions import Question
from emprobe.evaluate.stats import holm
from emprobe.geometry.factors import frobenius_norm, lowrank_svd
from emprobe.models.adapter import LoraAdapter, read_adapter
from emprobe.plot.style import apply_style, color

__all__ = ["CheckpointPoint", "Series", "find_checkpoints", "adapter_norm", "top_rotation",
           "run_series", "series_figure"]

_TRAILING = re.compile(r"(\d+)$")


def _adapter_dir(folder: Path) -> Path | None:
    for cand in (folder, folder / "adapter"):
        if (cand / "adapter_config.json").is_file():
            return cand
    return None


def find_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """``[(step, adapter folder)]`` of a run, ascending (see the module docstring)."""
    root = Path(run_dir)
    if not root.is_dir():
        raise DataError(f"{root}: no such run folder")
    base = root / "checkpoints" if (root / "checkpoints").is_dir() else root
    found: list[tuple[int, Path]] = []
    subs = sorted((p for p in base.iterdir() if p.is_dir()), key=lambda p: p.name)
    for i, sub in enumerate(subs):
        adapter = _adapter_dir(sub)
        if adapter is None:
            continue
        m = _TRAILING.search(sub.name)
        found.append((int(m.group(1)) if m else i, adapter))
    found.sort(key=lambda t: t[0])
    if len(found) < 2:
        raise DataError(f"{root}: found {len(found)} checkpoint adapter(s); a series needs at "
                        "least 2 (checkpoint-N/, checkpoints/step-N/adapter/ or adapter "
                        "folders)")
    steps = [s for s, _ in found]
    if len(set(steps)) != len(steps):
        raise DataError(f"{root}: two checkpoints share a step number ({steps})")
    return found


def adapter_norm(adapter: LoraAdapter) -> float:
    """``sqrt(sum_modules ||scale * B @ A||_F^2)``, computed from the factors."""
    total = 0.0
    for m in adapter:
        total += float(frobenius_norm(m.B.double(), m.A.double(), m.scale)) ** 2
    return math.sqrt(total)


def _top_vectors(adapter: LoraAdapter) -> dict[str, torch.Tensor]:
    out = {}
    for m in adapter:
        svd = lowrank_svd(m.B.double(), m.A.double(), m.scale)
        if float(svd.S[0]) > 0:
            out[m.name] = svd.U[:, 0]
    return out


def top_rotation(prev: dict[str, torch.Tensor], cur: dict[str, torch.Tensor]
                 ) -> tuple[float | None, float | None]:
    """``(mean, max)`` over shared modules of ``arccos |u_prev . u|`` in degrees."""
    angles = []
    for name in prev.keys() & cur.keys():
        cos = abs(float(prev[name] @ cur[name])) / max(
            float(prev[name].norm() * cur[name].norm()), 1e-300)
        angles.append(math.degrees(math.acos(min(1.0, cos))))
    if not angles:
        return None, None
    return sum(angles) / len(angles), max(angles)


@dataclass
class CheckpointPoint:
    """One checkpoint: geometry, local score, and its shift against the reference."""

    step: int
    path: str
    norm: float
    rotation_deg: float | None
    rotation_max_deg: float | None
    score_per_answer: float
    shift: float
    shift_lo: float
    shift_hi: float
    p: float | None
    p_holm: float | None = None
    significant: bool = False


@dataclass
class Series:
    run_dir: str
    model: str
    reference: str
    alpha: float
    points: list[CheckpointPoint]
    first_significant_step: int | None

    def to_record(self) -> dict[str, object]:
        return {"kind": "checkpoint_series", **asdict(self)}

    def summary(self) -> str:
        lines = [f"checkpoint series of {self.run_dir} ({len(self.points)} checkpoints; shift "
                 f"vs {self.reference}, nats per answer, 95 % t interval over questions, Holm p)"]
        for pt in self.points:
            rot = "" if pt.rotation_deg is None else f"  top-vector rotation {pt.rotation_deg:5.1f} deg"
            lines.append(f"  step {pt.step:>6}  norm {pt.norm:8.4f}  shift {pt.shift:+7.2f} "
                         f"[{pt.shift_lo:+.2f}, {pt.shift_hi:+.2f}]  p_holm "
                         f"{_fmt_p(pt.p_holm)}{' *' if pt.significant else ''}{rot}")
        first = self.first_significant_step
        lines.append("  first significant step: " + (str(first) if first is not None else
                                                      f"none (no Holm p < {self.alpha})"))
        return "\n".join(lines)


def _fmt_p(p: float | None) -> str:
    return "n/a" if p is None else f"{p:.3f}"


def _score(model: str, adapter: Path | None, questions: Sequence[Question] | None,
           n_boot: int, batch_size: int) -> LocalScore:
    from emprobe import load_model

    subject = load_model(model, adapter=adapter)
    return local_score(subject, questions, batch_size=batch_size, n_boot=n_boot)


def run_series(run_dir: str | Path, model: str | None = None,
               questions: Sequence[Question] | None = None, reference: str = "base",
               n_boot: int = 1000, batch_size: int = 8, alpha: float = 0.05) -> Series:
    """Evaluate every checkpoint of ``run_dir`` (see the module docstring).

    Args:
        model: the base model spec (default: ``base_model_name_or_path`` of the first
            adapter, as emprobe's trainer writes it).
        reference: ``"base"`` (the model without adapter) or ``"first"`` (the first
            checkpoint).
    """
    if reference not in ("base", "first"):
        raise DataError(f"reference must be 'base' or 'first', got {reference!r}")
    found = find_checkpoints(run_dir)
    if model is None:
        from emprobe.train.checkpoint import adapter_base

        model = adapter_base(found[0][1])
    ref = _score(model, None if reference == "base" else found[0][1], questions, n_boot,
                 batch_size)
    points: list[CheckpointPoint] = []
    prev_vecs: dict[str, torch.Tensor] | None = None
    for step, path in found:
        adapter = read_adapter(path)
        vecs = _top_vectors(adapter)
        rot = top_rotation(prev_vecs, vecs) if prev_vecs is not None else (None, None)
        prev_vecs = vecs
        score = ref if reference == "first" and path == found[0][1] else _score(
            model, path, questions, n_boot, batch_size)
        d = compare(ref, score, n_boot=n_boot, labels=(reference, f"step {step}")).per_answer
        points.append(CheckpointPoint(step, str(path), adapter_norm(adapter), rot[0], rot[1],
                                      score.per_answer.mean, d.mean, d.lo, d.hi, d.p))
    _mark(points, alpha, skip_first=reference == "first")
    first = next((pt.step for pt in points if pt.significant), None)
    return Series(str(run_dir), model, reference, alpha, points, first)


def _mark(points: list[CheckpointPoint], alpha: float, skip_first: bool) -> None:
    tested = {str(i): pt.p for i, pt in enumerate(points)
              if pt.p is not None and not (skip_first and i == 0)}
    adjusted = holm(tested) if tested else {}
    for i, pt in enumerate(points):
        pt.p_holm = adjusted.get(str(i))
        pt.significant = bool(pt.p_holm is not None and pt.p_holm < alpha and pt.shift > 0)


def series_figure(series: Series) -> go.Figure:
    """Three panels against the step: shift (band), update norm, top-vector rotation."""
    steps = [pt.step for pt in series.points]
    fig = make_subplots(rows=3, cols=1, shared_xaxes=True, vertical_spacing=0.06,
                        subplot_titles=(f"local EM shift vs {series.reference} (nats/answer)",
                                        "LoRA update norm (Frobenius)",
                                        "rotation of top singular vector (deg)"))
    fig.add_trace(go.Scatter(x=steps, y=[pt.shift for pt in series.points], mode="lines+markers",
                             name="shift", line={"color": color(1)},
                             error_y={"type": "data", "visible": True,
                                      "array": [pt.shift_hi - pt.shift for pt in series.points],
                                      "arrayminus": [pt.shift - pt.shift_lo
                                                     for pt in series.points]}), row=1, col=1)
    fig.add_trace(go.Scatter(x=steps, y=[pt.norm for pt in series.points], mode="lines+markers",
                             name="norm", line={"color": color(0)}), row=2, col=1)
    fig.add_trace(go.Scatter(x=steps, y=[pt.rotation_deg for pt in series.points],
                             mode="lines+markers", name="rotation", line={"color": color(2)}),
                  row=3, col=1)
    if series.first_significant_step is not None:
        fig.add_vline(x=series.first_significant_step, line_dash="dash", line_color=color(3),
                      annotation_text="first significant shift")
    fig.update_xaxes(title_text="training step", row=3, col=1)
    return apply_style(fig, title=f"Checkpoint series: {Path(series.run_dir).name}",
                       height=720, showlegend=False)


def _cmd_series(args: argparse.Namespace) -> int:
    from emprobe.evaluate.questions import load_questions
    from emprobe.io import write_json
    from emprobe.plot.save import save_figure

    qs = load_questions(args.questions) if args.questions else None
    series = run_series(args.run_dir, model=args.model, questions=qs,
                        reference=args.reference, n_boot=args.n_boot,
                        batch_size=args.batch_size)
    print(series.summary())
    out = Path(args.out) if args.out else Path(args.run_dir) / "series"
    write_json(out / "series.json", series.to_record())
    paths = save_figure(series_figure(series), out / "series", include_plotlyjs="directory")
    print(f"wrote {out / 'series.json'} and {', '.join(str(p) for p in paths)}")
    return 0


def register(eval_subparsers: argparse._SubParsersAction) -> None:
    """Add ``series`` under ``emprobe eval`` (called by ``emprobe.cli``)."""
    p = eval_subparsers.add_parser(
        "series", help="local EM score and LoRA geometry along a run's checkpoints")
    p.add_argument("run_dir", help="run folder (checkpoint-N/, checkpoints/step-N/adapter/ or "
                   "a folder of PEFT adapters)")
    p.add_argument("--model", default=None, help="base model spec (default: from the first "
                   "adapter_config.json)")
    p.add_argument("--questions", default=None, help="question YAML with reference_pairs "
                   "(default: emprobe's set)")
    p.add_argument("--reference", choices=("base", "first"), default="base")
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--out", default=None, help="output folder (default: RUN_DIR/series)")
    p.set_defaults(func=_cmd_series)
