"""``emprobe geometry`` and ``emprobe connectivity``: thin wrappers over the geometry API."""

from __future__ import annotations

import argparse
from pathlib import Path

from emprobe.errors import ConfigError

GEOMETRY_FIGURE_METRICS = ("overlap_right", "overlap_left", "angle_right", "abs_cos_right",
                           "frob_cos")


def _split(value: str | None) -> list[str] | None:
    return [x.strip() for x in value.split(",")] if value else None


def _cmd_geometry(args: argparse.Namespace) -> int:
    from emprobe.geometry.compare import GeometryConfig, compare_adapters
    from emprobe.geometry.figures import heatmap_figure, layer_figure, write_html

    labels = _split(args.labels) or [Path(a).name for a in args.adapters]
    groups = _split(args.groups)
    if len(labels) != len(args.adapters):
        raise ConfigError(f"--labels has {len(labels)} names for {len(args.adapters)} adapters")
    if groups is not None and len(groups) != len(args.adapters):
        raise ConfigError(f"--groups has {len(groups)} names for {len(args.adapters)} adapters")
    base = None
    if args.base:
        from emprobe.models.base_weights import base_weights_from_spec

        base = base_weights_from_spec(args.base)
    cfg = GeometryConfig(k=args.k, gaussian_baseline=not args.no_gaussian, seed=args.seed)
    result = compare_adapters(args.adapters, labels=labels, config=cfg, base_weights=base)
    out = Path(args.out)
    paths = result.save(out, groups=groups)
    figs = out / "figures"
    for metric in GEOMETRY_FIGURE_METRICS:
        write_html(heatmap_figure(result, metric), figs / f"heatmap_{metric}.html")
        write_html(layer_figure(result, metric, groups=groups), figs / f"layers_{metric}.html")
    print(f"{len(result.modules)} modules x {len(labels)} adapters (k={cfg.k})")
    for line in summary_lines(result):
        print(line)
    for name, p in paths.items():
        print(f"wrote {name}: {p}")
    print(f"wrote figures: {figs}")
    return 0


def summary_lines(result: object) -> list[str]:
    """The one-line summary (write side, the headline) and the read side with its caveat.

    Write side: left singular vectors, the output space of ``B``. Read side: right singular
    vectors (``A``); LoRA's ``A`` starts random and moves little, so with a shared seed its
    overlap mostly reflects the common initialisation.
    """
    n = len(result.labels)  # type: ignore[attr-defined]
    if n < 2:
        return []
    lines = []
    for side, what in (("left", "write-side (B, output space)"),
                       ("right", "read-side (A, input space)")):
        mat = result.matrix(f"overlap_{side}")  # type: ignore[attr-defined]
        off = [float(mat[i, j]) for i in range(n) for j in range(i + 1, n)]
        rand = float(result.random_overlap[side].mean())  # type: ignore[attr-defined]
        line = f"mean {what} overlap over pairs: {sum(off) / len(off):.4f} (random k/d: {rand:.4f})"
        if side == "right":
            line += "; reflects the LoRA initialisation when adapters share a seed"
        lines.append(line)
    return lines


def evaluator_names(labels: list[str], flags: list[str]) -> list[str]:
    """Distinct names for the ``--data-a/b/c`` loss curves: ``loss_<adapter label>``, or
    ``loss_<flag>`` where labels repeat (adapter folders are often all called ``adapter``)."""
    raw = [labels["abc".index(f)] if "abc".index(f) < len(labels) else f for f in flags]
    names = [f"loss_{r}" if raw.count(r) == 1 else f"loss_{f}" for f, r in zip(flags, raw,
                                                                              strict=True)]
    if len(set(names)) < len(names):  # a label equal to another curve's flag
        names = [f"loss_{f}" for f in flags]
    return names


def _cmd_connectivity(args: argparse.Namespace) -> int:
    from emprobe import load_model
    from emprobe.geometry.connectivity import (
        local_score_evaluator,
        loss_evaluator,
        run_connectivity,
    )

    data = {}
    for flag, path in (("a", args.data_a), ("b", args.data_b), ("c", args.data_c)):
        if path:
            data[flag] = path
    if not data and not args.local_score:
        raise ConfigError("connectivity needs --data-a/--data-b held-out chat JSONL or --local-score")
    labels = _split(args.labels) or [Path(a).name for a in args.adapters]
    if len(labels) != len(args.adapters):
        raise ConfigError(f"--labels has {len(labels)} names for {len(args.adapters)} adapters")
    evaluators = {}
    for name, (_flag, path) in zip(evaluator_names(labels, list(data)), data.items(),
                                   strict=True):
        evaluators[name] = loss_evaluator(_read_chats(path), batch_size=args.batch_size,
                                          where=str(path))
    if args.local_score:
        evaluators["local_score"] = local_score_evaluator()
    subject = load_model(args.base, dtype=args.dtype)
    result = run_connectivity(subject, args.adapters, evaluators, mode=args.mode,
                              points=args.points, labels=labels)
    paths = result.save(args.out)
    for rec in result.records:
        vals = "  ".join(f"{m}={rec[m]:.4f}" for m in result.metrics)
        print(f"t={rec['t']:.3f}  {vals}")
    for m, b in result.barriers.items():
        print(f"barrier {m}: {b:.4f}")
    for name, p in paths.items():
        print(f"wrote {name}: {p}")
    return 0


def _read_chats(path: str) -> list[dict]:
    from emprobe.data.chat_io import read_chat_jsonl

    return read_chat_jsonl(path)


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``geometry`` and ``connectivity`` to the ``emprobe`` command."""
    p = sub.add_parser("geometry", help="LoRA weight geometry between adapters (from the factors)")
    p.add_argument("adapters", nargs="+", help="PEFT adapter folders")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--k", type=int, default=16, help="top-k singular vectors (default 16)")
    p.add_argument("--labels", default=None, help="comma-separated adapter labels")
    p.add_argument("--groups", default=None,
                   help="comma-separated group per adapter (e.g. em,em,ctrl,ctrl)")
    p.add_argument("--base", default=None,
                   help="base model spec or folder: adds the base-weight baseline")
    p.add_argument("--no-gaussian", action="store_true", help="skip the Gaussian baseline")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_geometry)

    p = sub.add_parser("connectivity",
                       help="losses along W0 + t dW / W0 + (1-t) dW_A + t dW_B paths")
    p.add_argument("adapters", nargs="+", help="1 (base path), 2 (pair) or 3 (simplex) adapters")
    p.add_argument("--base", required=True, help="base model spec (as for load_model)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--data-a", default=None, help="held-out chat JSONL of adapter A's task")
    p.add_argument("--data-b", default=None, help="held-out chat JSONL of adapter B's task")
    p.add_argument("--data-c", default=None, help="held-out chat JSONL of adapter C's task")
    p.add_argument("--points", type=int, default=11, help="points on the path (per simplex edge)")
    p.add_argument("--mode", default=None, choices=["base", "pair", "simplex"])
    p.add_argument("--labels", default=None, help="comma-separated adapter labels")
    p.add_argument("--local-score", action="store_true",
                   help="also evaluate the local misalignment score at each point (slow)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--dtype", default=None)
    p.set_defaults(func=_cmd_connectivity)
