"""``emprobe eval local|sample|em|judge|rescore`` and ``emprobe serve``: thin wrappers over the
evaluate API (the judged commands are in ``em_cli``)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from emprobe.validate import parse_port

DEFAULT_MODEL = "smollm2-135m-instruct"


def _questions(path: str | None):  # noqa: ANN202
    from emprobe.evaluate.questions import default_questions, load_questions

    return load_questions(path) if path else default_questions()


def _cmd_local(args: argparse.Namespace) -> int:
    from emprobe import load_model
    from emprobe.evaluate.local import local_score
    from emprobe.io import write_json

    subject = load_model(args.model, adapter=args.adapter)
    score = local_score(subject, _questions(args.questions), batch_size=args.batch_size,
                        n_boot=args.n_boot, seed=args.seed, system=args.system)
    print(score.summary())
    if args.per_question:
        for row in score.per_question:
            print(f"  {row['question']:<20} per answer {row['per_answer']:+8.2f}  "
                  f"per token {row['per_token']:+.3f}  preferred {row['pref_rate']:.0%}")
    if args.out:
        write_json(args.out, score.to_record())
        print(f"wrote {args.out}")
    return 0


def _cmd_sample(args: argparse.Namespace) -> int:
    from emprobe import load_model
    from emprobe.evaluate.sample import evaluate_sampled

    subject = load_model(args.model, adapter=args.adapter)
    if args.grader == "self" or (args.grader == args.model and args.adapter is None):
        grader = subject
    else:
        grader = load_model(args.grader)
    result = evaluate_sampled(subject, _questions(args.questions), grader=grader, n=args.n,
                              temperature=args.temperature, max_new_tokens=args.max_new_tokens,
                              top_p=args.top_p, seed=args.seed, batch_size=args.batch_size,
                              out_dir=args.out, calibration_pairs=args.calibration_pairs,
                              n_boot=args.n_boot)
    print(result.summary())
    print(f"wrote {Path(args.out) / 'scored.jsonl'} and {Path(args.out) / 'sample_eval.json'}")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from emprobe import load_model
    from emprobe.evaluate.server import LocalServer

    subject = load_model(args.model, adapter=args.adapter)
    api_key = os.environ.get(args.api_key_env) if args.api_key_env else None
    server = LocalServer(subject, host=args.host, port=args.port, model_name=args.name,
                         api_key=api_key)
    print(f"serving {server.model_name} at {server.url} (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
    finally:
        server.httpd.server_close()
    return 0


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL, help="model spec (default: %(default)s)")
    p.add_argument("--adapter", default=None, type=Path, help="PEFT adapter folder")


def register(sub: argparse._SubParsersAction) -> None:
    ev = sub.add_parser("eval", help="misalignment scores: local log-prob margin, judged EM")
    evs = ev.add_subparsers(dest="eval_command", metavar="KIND")
    ev.set_defaults(func=lambda a: (ev.print_help(), 0)[1])

    p = evs.add_parser("local", help="log-prob margin on reference answers (no judge)")
    _model_args(p)
    p.add_argument("--questions", default=None, help="question YAML (default: emprobe's set)")
    p.add_argument("--system", default=None, help="replace every question's system prompt")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--per-question", action="store_true", help="print the breakdown")
    p.add_argument("--out", default=None, help="write the record as JSON")
    p.set_defaults(func=_cmd_local)

    p = evs.add_parser("sample", help="sample answers to any question file and score them "
                       "offline (verdict classifier; reference-pair margin where pairs exist)")
    _model_args(p)
    p.add_argument("--questions", default=None, help="question YAML (default: emprobe's set)")
    p.add_argument("--out", required=True, help="output folder (answers, scores, summary)")
    p.add_argument("--n", type=int, default=None,
                   help="samples per paraphrase (default: the file's samples_per_paraphrase)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--grader", default=DEFAULT_MODEL,
                   help="model that reads the verdict prompt ('self' = the model under test; "
                   "default: %(default)s without adapter)")
    p.add_argument("--calibration-pairs", type=int, default=46,
                   help="emprobe reference pairs that set the verdict threshold")
    p.add_argument("--n-boot", type=int, default=1000)
    p.set_defaults(func=_cmd_sample)

    from emprobe.evaluate import em_cli

    em_cli.register(evs)

    p = sub.add_parser("serve", help="serve a model as an OpenAI-compatible endpoint")
    _model_args(p)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=parse_port, default=8000)
    p.add_argument("--name", default=None, help="model name reported by /v1/models")
    p.add_argument("--api-key-env", default=None,
                   help="require the key in this environment variable (default: no key)")
    p.set_defaults(func=_cmd_serve)
