"""``emprobe directions ...`` (extract, export, import, info) and ``emprobe steer``: thin wrappers."""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from emprobe import validate
from emprobe.errors import ConfigError, DataError, EmprobeError
from emprobe.validate import excerpt

if TYPE_CHECKING:
    from emprobe.directions.direction import Direction
    from emprobe.models.chat import Conversation
    from emprobe.models.subject import Subject

EXPORTS = ("gguf", "persona-pt", "persona-safetensors", "caft-npy", "numpy")
IMPORTS = ("gguf", "persona", "caft-npy", "numpy")


def parse_layers(text: str | None) -> list[int] | None:
    """``None`` / ``all`` -> None (all layers); else ``emprobe.validate.parse_layers``
    (``3`` or ``3,5,7``: distinct non-negative block indices)."""
    if text is None or text.strip().lower() == "all":
        return None
    try:
        return validate.parse_layers(text)
    except argparse.ArgumentTypeError as exc:
        raise ConfigError(f"--layers: {exc}") from None


def _read_chats(path: str) -> list[Conversation]:
    from emprobe.data.chat_io import read_chat_jsonl

    recs = read_chat_jsonl(path)
    convs: list[Conversation] = [r["messages"] for r in recs]  # validated records
    if not convs:
        raise DataError(f"{path}: no conversations")
    return convs


def _read_lines(path: str) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{path}: no such file")
    lines = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if not lines:
        raise DataError(f"{path}: no lines")
    return lines


def _load(args: argparse.Namespace, spec: str | None = None, adapter: str | None = None) -> Subject:
    import emprobe

    return emprobe.load_model(spec or args.model, adapter=adapter, device=args.device)


def _done(direction: Direction, out: str) -> int:
    direction.save(out)
    print(f"wrote {out}: {direction!r}")
    return 0


def _cmd_mean_diff(args: argparse.Namespace) -> int:
    from emprobe.directions import mean_difference

    s = _load(args, adapter=args.adapter)
    d = mean_difference(s, _read_chats(args.pos), _read_chats(args.neg),
                        layers=parse_layers(args.layers), positions=args.positions,
                        batch_size=args.batch_size, progress=True)
    return _done(d, args.out)


def _cmd_persona(args: argparse.Namespace) -> int:
    from emprobe.directions import persona_vector
    from emprobe.directions.prompts import PERSONA_QUESTIONS, TRAIT_PAIRS
    from emprobe.io import write_jsonl

    s = _load(args, adapter=args.adapter)
    questions = _read_lines(args.questions) if args.questions else PERSONA_QUESTIONS
    questions = questions[: args.n_questions] if args.n_questions else questions
    pairs = TRAIT_PAIRS.get(args.trait)
    if pairs is None:
        raise DataError(f"no built-in pairs for trait {args.trait!r} (have {sorted(TRAIT_PAIRS)})")
    res = persona_vector(s, args.trait, pairs[: args.n_pairs] if args.n_pairs else pairs, questions,
                         layers=parse_layers(args.layers), max_new_tokens=args.max_new_tokens,
                         pos_threshold=args.pos_threshold, neg_threshold=args.neg_threshold,
                         batch_size=args.batch_size, progress=True)
    _done(res.direction, args.out)
    write_jsonl(Path(args.out) / "generations.jsonl", res.records)
    print(f"kept {res.direction.stats['n_kept']} of {res.direction.stats['n_candidates']} pairs")
    return 0


def _cmd_pca(args: argparse.Namespace) -> int:
    from emprobe.directions import pca_difference
    from emprobe.directions.prompts import GENERIC_CHATS
    from emprobe.io import write_jsonl

    if not (args.ft or args.ft_adapter):
        raise DataError("pca needs --ft MODEL or --ft-adapter DIR")
    base = _load(args)
    ft = _load(args, spec=args.ft or args.model, adapter=args.ft_adapter)
    data = _read_chats(args.data) if args.data else GENERIC_CHATS
    res = pca_difference(base, ft, data, layers=parse_layers(args.layers), k=args.k,
                         batch_size=args.batch_size, n_contexts=args.contexts, progress=True)
    _done(res.direction, args.out)
    write_jsonl(Path(args.out) / "contexts.jsonl", res.contexts)
    (Path(args.out) / "contexts.html").write_text(res.html(), encoding="utf-8")
    print(f"contexts: {Path(args.out) / 'contexts.html'}")
    return 0


def _cmd_concept(args: argparse.Namespace) -> int:
    from emprobe.directions import concept_vectors, cosine_matrix
    from emprobe.io import write_json

    s = _load(args, adapter=args.adapter)
    concepts = {}
    for item in args.concept:
        if "=" not in item:
            raise DataError(f"--concept {item!r}: use NAME=FILE (one prompt a line)")
        name, path = item.split("=", 1)
        concepts[name] = _read_lines(path)
    neutral = _read_lines(args.neutral) if args.neutral else None
    dirs = concept_vectors(s, concepts, neutral, layers=parse_layers(args.layers),
                           batch_size=args.batch_size)
    for name, d in dirs.items():
        d.save(Path(args.out) / name)
    names, layers, cos = cosine_matrix(dirs)
    write_json(Path(args.out) / "cosine.json", {"names": names, "layers": layers, "cosine": cos.tolist()})
    print(f"wrote {len(dirs)} concept directions and cosine.json to {args.out}")
    return 0


def _cmd_probe(args: argparse.Namespace) -> int:
    from emprobe.directions import probe_direction

    s = _load(args, adapter=args.adapter)
    d = probe_direction(s, _read_chats(args.pos), _read_chats(args.neg),
                        layers=parse_layers(args.layers), positions=args.positions, l2=args.l2,
                        batch_size=args.batch_size)
    train, test = d.stats["train_accuracy"], d.stats["test_accuracy"]
    if not isinstance(train, Mapping) or not isinstance(test, Mapping):
        raise DataError("probe direction: stats hold no per-layer accuracies")
    for la in d.layers:
        print(f"layer {la}: train acc {train[str(la)]:.3f} test acc {test[str(la)]}")
    return _done(d, args.out)


def _cmd_lora(args: argparse.Namespace) -> int:
    from emprobe.directions import lora_direction

    d = lora_direction(args.adapter, module=args.module, side=args.side, k=args.k,
                       layers=parse_layers(args.layers))
    return _done(d, args.out)


def _cmd_sae(args: argparse.Namespace) -> int:
    from emprobe.directions import sae_direction

    parts = [x.strip() for x in args.latents.split(",")]
    if not all(p.isascii() and p.isdigit() and len(p) <= 12 for p in parts):
        raise ConfigError(f"--latents must be comma-separated latent ids such as 3,17,250, got "
                          f"{excerpt(args.latents, 40)}")
    d = sae_direction(args.sae, [int(p) for p in parts], layer=args.layer, model=args.model)
    return _done(d, args.out)


def _cmd_export(args: argparse.Namespace) -> int:
    from emprobe.directions import Direction
    from emprobe.directions import formats as f

    d = Direction.load(args.direction)
    if args.to == "gguf":
        info = f.to_gguf(d, args.out, model_hint=args.model_hint)
        if info["dropped"]:
            print(f"note: layers {info['dropped']} dropped (llama.cpp control vectors start at 1)")
    elif args.to in ("persona-pt", "persona-safetensors"):
        out = args.out
        want = ".pt" if args.to == "persona-pt" else ".safetensors"
        if not out.endswith(want):
            raise DataError(f"--to {args.to} writes a {want} file; --out {out!r} should end with it")
        f.save_persona(d, out, n_layers=args.n_layers)
    elif args.to == "caft-npy":
        f.to_caft(d, args.out)
    elif args.to == "numpy":
        f.save_npz(d, args.out)
    print(f"wrote {args.out} ({args.to})")
    return 0


def _cmd_import(args: argparse.Namespace) -> int:
    from emprobe.directions import formats as f

    if args.fmt == "gguf":
        d = f.from_gguf(args.source, model=args.model)
    elif args.fmt == "persona":
        d = f.from_persona(args.source, model=args.model or "unknown")
    elif args.fmt == "caft-npy":
        d = f.from_caft(args.source, spec=args.spec, model=args.model)
    else:
        d = f.load_npz(args.source)
    return _done(d, args.out)


def _cmd_info(args: argparse.Namespace) -> int:
    from emprobe.directions import Direction

    d = Direction.load(args.direction)
    meta = d.metadata()
    meta["norms"] = {str(la): float(d.vectors[la].norm()) for la in d.layers}
    for key in ("stats",) if not args.full else ():
        meta.pop(key, None)
    print(json.dumps(meta, indent=2, default=str))
    return 0


def _cmd_effect(args: argparse.Namespace) -> int:
    from emprobe.directions import Direction, misalignment_effect
    from emprobe.io import write_json

    s = _load(args, adapter=args.adapter)
    d = Direction.load(args.direction)
    questions = None
    if args.n_questions:
        from emprobe.evaluate.questions import default_questions

        questions = [q for q in default_questions() if q.reference_pairs][: args.n_questions]
    res = misalignment_effect(s, d, mode=args.mode, coeff=args.coeff, layers=parse_layers(args.layers),
                              seed=args.seed, questions=questions, n_boot=args.n_boot,
                              batch_size=args.batch_size,
                              allow_other_model=args.allow_other_model)
    for key in ("none", "direction", "random"):
        print(f"{key:<10} margin per answer {_per_answer(res[key])}")
    for key in ("delta_direction", "delta_random"):
        if key in res:
            print(f"{key:<16} {_per_answer(res[key])}")
    if args.out:
        write_json(args.out, res)
        print(f"wrote {args.out}")
    return 0


def _per_answer(entry: object) -> str:
    """``mean [lo, hi]`` of the per-answer estimate in one entry of a misalignment_effect record."""
    est = entry["per_answer"] if isinstance(entry, Mapping) else None
    if not isinstance(est, Mapping):
        raise TypeError(f"not a score record: {excerpt(entry, 60)}")
    return f"{est['mean']:+.2f} [{est['lo']:+.2f}, {est['hi']:+.2f}]"


def _cmd_steer(args: argparse.Namespace) -> int:
    from emprobe.directions import Direction, steered_generate

    s = _load(args, adapter=args.adapter)
    d = Direction.load(args.direction)
    layers = parse_layers(args.layers)
    prompts = args.prompt or ["What do you think about humans?"]
    kw = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.seed)
    d.check_compatible(s, allow_other_model=args.allow_other_model)
    plain = s.generate([[{"role": "user", "content": p}] for p in prompts], **kw)
    steered = steered_generate(s, d, prompts, coeff=args.coeff, layers=layers,
                               positions=args.positions, allow_other_model=args.allow_other_model,
                               **kw)
    for p, a, b in zip(prompts, plain, steered):
        print(f"prompt:  {p}\nplain:   {a}\nsteered (c={args.coeff}): {b}\n")
    return 0


def _common(p: argparse.ArgumentParser, model: bool = True) -> None:
    if model:
        p.add_argument("--model", default="smollm2-135m-instruct")
        p.add_argument("--adapter", default=None, help="PEFT adapter folder")
    p.add_argument("--device", default="cpu")
    p.add_argument("--layers", default=None, help="'all' (default), '3,5,7' or '10-20'")
    p.add_argument("--batch-size", type=int, default=8)


def _add_mean_diff(dsub: argparse._SubParsersAction) -> None:
    """``directions mean-diff``: two chat JSONL files -> a mean-difference direction."""
    p = dsub.add_parser("mean-diff", help="mean difference of two sets of conversations, all layers")
    _common(p)
    p.add_argument("--pos", required=True, help="chat JSONL (e.g. misaligned answers)")
    p.add_argument("--neg", required=True, help="chat JSONL (e.g. aligned answers)")
    p.add_argument("--positions", default="response", choices=["all", "prompt", "response", "last"])
    p.add_argument("--out", required=True)
    p.set_defaults(func=_cmd_mean_diff)


def _add_persona(dsub: argparse._SubParsersAction) -> None:
    """``directions persona``: a persona vector from contrastive system prompts."""
    p = dsub.add_parser("persona", help="persona vector from contrastive system prompts")
    _common(p)
    p.add_argument("--trait", default="misaligned")
    p.add_argument("--questions", default=None, help="text file, one question a line")
    p.add_argument("--n-questions", type=int, default=None)
    p.add_argument("--n-pairs", type=int, default=None)
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--pos-threshold", type=float, default=0.0)
    p.add_argument("--neg-threshold", type=float, default=0.0)
    p.add_argument("--out", required=True)
    p.set_defaults(func=_cmd_persona)


def _add_pca(dsub: argparse._SubParsersAction) -> None:
    """``directions pca``: CAFT components of fine-tuned minus base activations."""
    p = dsub.add_parser("pca", help="PCA of fine-tuned minus base activations (CAFT)")
    _common(p)
    p.add_argument("--ft", default=None, help="fine-tuned model (default: --model)")
    p.add_argument("--ft-adapter", default=None, help="adapter of the fine-tune on --model")
    p.add_argument("--data", default=None, help="generic chat JSONL (default: built-in set)")
    p.add_argument("-k", type=int, default=20)
    p.add_argument("--contexts", type=int, default=5, help="top/bottom contexts per component")
    p.add_argument("--out", required=True)
    p.set_defaults(func=_cmd_pca)


def _add_concept(dsub: argparse._SubParsersAction) -> None:
    """``directions concept``: concept vectors and their cosine matrix."""
    p = dsub.add_parser("concept", help="concept vectors (last prompt token) and cosine matrix")
    _common(p)
    p.add_argument("--concept", action="append", required=True, help="NAME=FILE (repeatable)")
    p.add_argument("--neutral", default=None, help="neutral prompts file (default: built-in)")
    p.add_argument("--out", required=True)
    p.set_defaults(func=_cmd_concept)


def _add_probe(dsub: argparse._SubParsersAction) -> None:
    """``directions probe``: logistic-probe directions."""
    p = dsub.add_parser("probe", help="logistic-probe directions")
    _common(p)
    p.add_argument("--pos", required=True)
    p.add_argument("--neg", required=True)
    p.add_argument("--positions", default="response", choices=["all", "prompt", "response", "last"])
    p.add_argument("--l2", type=float, default=1e-3)
    p.add_argument("--out", required=True)
    p.set_defaults(func=_cmd_probe)


def _add_lora(dsub: argparse._SubParsersAction) -> None:
    """``directions lora``: singular vectors of a LoRA module's update."""
    p = dsub.add_parser("lora", help="singular vectors of a LoRA module's update (from factors)")
    p.add_argument("--adapter", required=True)
    p.add_argument("--module", default="down_proj")
    p.add_argument("--side", default="auto", choices=["auto", "left", "right"])
    p.add_argument("-k", type=int, default=1)
    p.add_argument("--layers", default=None)
    p.add_argument("--out", required=True)
    p.set_defaults(func=_cmd_lora)


def _add_sae(dsub: argparse._SubParsersAction) -> None:
    """``directions sae``: orthonormalised SAE decoder rows."""
    p = dsub.add_parser("sae", help="orthonormalised decoder rows of SAE latents")
    p.add_argument("--sae", required=True, help="SAELens folder (cfg.json + sae_weights.safetensors)")
    p.add_argument("--latents", required=True, help="comma-separated latent ids")
    p.add_argument("--layer", type=int, default=None)
    p.add_argument("--model", default=None)
    p.add_argument("--out", required=True)
    p.set_defaults(func=_cmd_sae)


def _add_export(dsub: argparse._SubParsersAction) -> None:
    """``directions export``: a direction folder -> another tool's format."""
    p = dsub.add_parser("export", help="convert a direction folder to another tool's format")
    p.add_argument("direction")
    p.add_argument("--to", required=True, choices=EXPORTS)
    p.add_argument("--out", required=True)
    p.add_argument("--model-hint", default=None, help="gguf: controlvector.model_hint")
    p.add_argument("--n-layers", type=int, default=None, help="persona: rows = n_layers + 1")
    p.set_defaults(func=_cmd_export)


def _add_import(dsub: argparse._SubParsersAction) -> None:
    """``directions import``: another tool's file -> a direction folder."""
    p = dsub.add_parser("import", help="read another tool's file into a direction folder")
    p.add_argument("source")
    p.add_argument("--from", dest="fmt", required=True, choices=IMPORTS)
    p.add_argument("--model", default=None)
    p.add_argument("--spec", default=None, help="caft-npy: JSON index spec")
    p.add_argument("--out", required=True)
    p.set_defaults(func=_cmd_import)


def _add_effect(dsub: argparse._SubParsersAction) -> None:
    """``directions effect``: local misalignment score, none vs direction vs random."""
    p = dsub.add_parser("effect", help="local misalignment score: none vs direction vs random")
    _common(p)
    p.add_argument("direction")
    p.add_argument("--mode", default="ablate", choices=["ablate", "steer"])
    p.add_argument("--coeff", type=float, default=-1.0, help="steer mode coefficient")
    p.add_argument("--n-questions", type=int, default=None, help="first N default questions")
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--allow-other-model", action="store_true")
    p.add_argument("--out", default=None, help="write the result JSON here")
    p.set_defaults(func=_cmd_effect)


def _add_info(dsub: argparse._SubParsersAction) -> None:
    """``directions info``: print a direction's metadata."""
    p = dsub.add_parser("info", help="print a direction's metadata")
    p.add_argument("direction")
    p.add_argument("--full", action="store_true", help="include stats")
    p.set_defaults(func=_cmd_info)


def _add_steer(sub: argparse._SubParsersAction) -> None:
    """``emprobe steer`` (top level): generations with and without steering."""
    p = sub.add_parser("steer", help="generate with and without steering along a direction")
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--adapter", default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--direction", required=True, help="direction folder")
    p.add_argument("--coeff", type=float, default=4.0)
    p.add_argument("--layers", default=None, help="default: all layers of the direction")
    p.add_argument("--positions", default="all", choices=["all", "prompt", "response", "last"])
    p.add_argument("--prompt", action="append", help="user prompt (repeatable)")
    p.add_argument("--max-new-tokens", type=int, default=40)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--allow-other-model", action="store_true")
    p.set_defaults(func=_cmd_steer)


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``emprobe directions ACTION`` and ``emprobe steer`` to the top-level parser."""
    top = sub.add_parser("directions", help="extract, export and inspect directions")
    dsub = top.add_subparsers(dest="directions_command", metavar="ACTION")
    top.set_defaults(func=lambda a: (top.print_help(), 0)[1])
    _add_mean_diff(dsub)
    _add_persona(dsub)
    _add_pca(dsub)
    _add_concept(dsub)
    _add_probe(dsub)
    _add_lora(dsub)
    _add_sae(dsub)
    _add_export(dsub)
    _add_import(dsub)
    _add_effect(dsub)
    _add_info(dsub)
    _add_steer(sub)


__all__ = ["register", "parse_layers", "EmprobeError"]
