"""``emprobe train``: fine-tune on chat JSONL with optional training-time interventions."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

from emprobe.errors import DataError

if TYPE_CHECKING:
    from emprobe.models.subject import Subject
    from emprobe.train.interventions import Intervention

__all__ = ["register", "build_interventions", "check_direction_source"]


def _layers(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise DataError(f"--layers: expected comma-separated integers, got {text!r}") from None


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="LoRA / full fine-tuning with CAFT, steering, GRASP, inoculation, unlearning",
        description="Fine-tune a model on chat JSONL ({'messages': [...]} per line). Writes "
        "OUT/adapter (PEFT), OUT/train_config.json, OUT/metrics.jsonl, OUT/checkpoints/.")
    p.add_argument("--data", required=True, help="training chat JSONL")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--model", default="smollm2-135m-instruct", help="model spec or folder")
    p.add_argument("--preset", default="cpu-lora", help="standard | rank1 | cpu-lora | full")
    p.add_argument("--config", default=None, help="a train_config.json (overrides --preset)")
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--epochs", type=float, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--grad-accum", type=int, default=None)
    p.add_argument("--max-length", type=int, default=None,
                   help="tokens per sequence (default: the preset's; presets derive it from "
                   "the data: the longest record, capped by --max-length-cap)")
    p.add_argument("--max-length-cap", type=int, default=None,
                   help="upper bound on a data-derived max_length")
    p.add_argument("--pack", action="store_true", default=None,
                   help="pack each micro-batch's records into rows (position ids reset per "
                   "record; same loss, less padding)")
    p.add_argument("--engine", default="hf", choices=["hf", "emprobe"],
                   help="training engine: transformers' Trainer with emprobe's objectives and "
                   "interventions (default; accelerate launch) or emprobe's own loop "
                   "(deprecated; the same adapter)")
    p.add_argument("--gradient-checkpointing", action="store_true",
                   help="recompute decoder blocks in the backward pass (less memory; the "
                   "intervention hooks run again, results unchanged)")
    p.add_argument("--rslora", action=argparse.BooleanOptionalAction, default=None,
                   help="rank-stabilised LoRA scaling alpha/sqrt(r) (presets: on)")
    p.add_argument("--rank", type=int, default=None, help="LoRA rank r")
    p.add_argument("--alpha", type=float, default=None, help="LoRA alpha")
    p.add_argument("--target-modules", default=None, help="comma-separated module names")
    p.add_argument("--lora-layers", default=None, help="comma-separated layers to adapt")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--checkpoint-every", type=int, default=None)
    p.add_argument("--log-every", type=int, default=None)
    g = p.add_argument_group("interventions")
    g.add_argument("--caft", default=None,
                   help="safetensors with tensors 'layer.<l>' [d_model, k] (or a Direction folder)")
    g.add_argument("--caft-mode", default="zero", choices=["zero", "mean"])
    g.add_argument("--caft-positions", default="all", choices=["all", "response"])
    g.add_argument("--steer", default=None,
                   help="safetensors with tensors 'layer.<l>' [d_model] (or a Direction folder)")
    g.add_argument("--coeff", type=float, default=1.0, help="steering coefficient c")
    g.add_argument("--layers", default=None, help="steering layers (default: all in the file)")
    g.add_argument("--grasp", default=None, help="naive adapter (or run) folder for GRASP")
    g.add_argument("--grasp-k", type=int, default=1)
    g.add_argument("--grasp-side", default="write", choices=["write", "read", "both"])
    g.add_argument("--inoculate", default=None, help="system prompt added to every record")
    g.add_argument("--retain", default=None, help="retain-set chat JSONL")
    g.add_argument("--retain-ce", type=float, default=None, help="weight of retain-set CE")
    g.add_argument("--retain-kl", type=float, default=None, help="weight of KL to base on retain")
    g.add_argument("--unlearn", default=None, choices=["ga", "npo"])
    g.add_argument("--monitor", default=None,
                   help="safetensors 'layer.<l>' [d_model] directions whose projections to log")
    g.add_argument("--allow-other-model", action="store_true",
                   help="accept Direction folders extracted from another model (same width)")
    p.add_argument("--no-resume", action="store_true", help="start over instead of resuming")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_train)


def check_direction_source(path: str | os.PathLike[str], subject: Subject, flag: str,
                           allow_other_model: bool = False) -> None:
    """Refuse a Direction folder extracted from another model, as ``emprobe steer`` does.

    Reads ``direction.json`` (model id, ``d_model``, weights fingerprint). A different width
    is always an error; a different model (neither the same id nor the same fingerprint) is
    one unless ``allow_other_model``. Plain safetensors files carry no model: their widths
    are checked by the intervention itself.
    """
    from emprobe.directions.direction import ModelMismatchError
    from emprobe.errors import FormatError, ShapeError
    from emprobe.io import read_json

    folder = Path(path)
    if not folder.is_dir():
        return
    meta = read_json(folder / "direction.json")
    if not isinstance(meta, dict):
        raise FormatError(f"{flag} {folder}/direction.json: expected a JSON object")
    model, d_model, fp = meta.get("model"), meta.get("d_model"), meta.get("fingerprint")
    if d_model is not None and int(d_model) != int(subject.d_model):
        raise ShapeError(f"{flag} {folder}: direction from {model!r} has width {d_model}, "
                         f"model {subject.name!r} has d_model {subject.d_model}")
    if allow_other_model:
        return
    same_name = model is not None and str(subject.name) == str(model)
    same_weights = fp is not None and subject.fingerprint() == fp
    if not (same_name or same_weights):
        raise ModelMismatchError(f"{flag} {folder}: direction was extracted from {model!r}, "
                                 f"not {subject.name!r}; pass --allow-other-model to use it")


def build_interventions(args: argparse.Namespace) -> list[Intervention]:
    """Interventions named by CLI flags (also used by recipes that take the same flags)."""
    from emprobe.train.interventions import (
        CAFT,
        GRASP,
        PreventativeSteering,
        load_layer_tensors,
        site_of,
    )

    ivs: list[Intervention] = []
    if args.caft:
        bases = load_layer_tensors(args.caft, "CAFT basis")
        ivs.append(CAFT(bases, mode=args.caft_mode, positions=args.caft_positions,
                        site=site_of(args.caft)))
    if args.steer:
        vecs = load_layer_tensors(args.steer, "steering vector")
        ivs.append(PreventativeSteering(vecs, coeff=args.coeff, layers=_layers(args.layers),
                                        site=site_of(args.steer)))
    if args.grasp:
        ivs.append(GRASP.from_adapter(args.grasp, k=args.grasp_k, side=args.grasp_side))
    return ivs


def _cmd_train(args: argparse.Namespace) -> int:
    import torch

    from emprobe.io import read_json
    from emprobe.models import load_model
    from emprobe.train.config import TrainConfig, preset
    from emprobe.train.data import read_records
    from emprobe.train.interventions import load_layer_tensors
    from emprobe.train.trainer import finetune

    cfg = TrainConfig.load(args.config) if args.config else preset(args.preset)
    overrides = {
        "max_steps": args.max_steps, "epochs": args.epochs, "lr": args.lr,
        "batch_size": args.batch_size, "grad_accum": args.grad_accum,
        "max_length": args.max_length,
        "max_length_cap": args.max_length_cap, "lora_r": args.rank, "lora_alpha": args.alpha,
        "seed": args.seed, "checkpoint_every": args.checkpoint_every,
        "log_every": args.log_every, "inoculate": args.inoculate, "unlearn": args.unlearn,
        "retain_ce": args.retain_ce, "retain_kl": args.retain_kl,
        "target_modules": args.target_modules.split(",") if args.target_modules else None,
        "layers_to_transform": _layers(args.lora_layers),
        "pack": args.pack, "use_rslora": args.rslora,
    }
    cfg = cfg.replace(**{k: v for k, v in overrides.items() if v is not None})
    if args.retain and cfg.retain_ce == 0 and cfg.retain_kl == 0:
        cfg = cfg.replace(retain_ce=1.0)
    records = read_records(args.data)
    retain = read_records(args.retain) if args.retain else None
    cfg.check()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    subject = load_model(args.model,
                         device=f"cuda:{local}" if torch.cuda.is_available() else "cpu")
    for flag in ("caft", "steer", "monitor"):
        if getattr(args, flag):
            check_direction_source(getattr(args, flag), subject, f"--{flag}",
                                   args.allow_other_model)
    monitor = load_layer_tensors(args.monitor, "monitor direction") if args.monitor else None
    result = finetune(subject, records, cfg, args.out, interventions=build_interventions(args),
                      retain=retain, monitor=monitor, resume=not args.no_resume,
                      progress=not args.quiet, engine=args.engine,
                      gradient_checkpointing=args.gradient_checkpointing)
    if result.rank == 0:
        loss = "n/a" if result.final_loss is None else f"{result.final_loss:.4f}"
        print(f"trained {result.steps} steps, final loss {loss}; adapter: {result.adapter_dir}")
        rep = read_json(result.out_dir / "run.json").get("data")
        if rep:
            print(f"data: max_length {rep['max_length']} ({rep['max_length_source']}); "
                  f"dropped {rep['n_dropped']} of {rep['n_records']} records, truncated "
                  f"{rep['n_truncated']} ({rep['n_response_truncated']} in the response); "
                  f"response tokens lost {rep['response_tokens_lost']} of "
                  f"{rep['response_tokens_total']}")
    return 0
