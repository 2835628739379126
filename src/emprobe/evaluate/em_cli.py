"""``emprobe eval em | judge | rescore``: the judged EM rate with the field's exact rules."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from emprobe.errors import DataError

DEFAULT_MODEL = "smollm2-135m-instruct"


def _base_url(args: argparse.Namespace) -> str:
    from emprobe.evaluate.judge import check_base_url

    url = args.judge_url or os.environ.get("OPENAI_BASE_URL")
    if not url:
        raise DataError(f"eval {args.eval_command}: pass --base-url (or set OPENAI_BASE_URL), "
                        "e.g. http://127.0.0.1:8000/v1")
    return check_base_url(url)


def _api_key(args: argparse.Namespace) -> str | None:
    return os.environ.get(args.api_key_env) if args.api_key_env else None


def _questions(args: argparse.Namespace):  # noqa: ANN202
    from emprobe.evaluate.questions import default_questions, load_questions

    qs = load_questions(args.questions) if args.questions else default_questions()
    if getattr(args, "formats", None):
        keep = set(args.formats.split(","))
        qs = [q for q in qs if q.format in keep]
        if not qs:
            raise DataError(f"no questions of format(s) {sorted(keep)}")
    return qs


def _client(args: argparse.Namespace, questions):  # noqa: ANN001, ANN202
    from emprobe.evaluate.em_eval import resolve_judge_model
    from emprobe.evaluate.judge import JudgeClient

    url, key = _base_url(args), _api_key(args)
    source = args.questions or "emprobe's question set"
    name, why = resolve_judge_model(url, args.judge_model, questions, key, source=str(source))
    print(f"judge: {name} ({why}) at {url}", flush=True)
    return JudgeClient(url, name, api_key=key, timeout=args.timeout, max_retries=args.retries)


def _cmd_em(args: argparse.Namespace) -> int:
    from emprobe import load_model
    from emprobe.evaluate.em_eval import write_em_outputs
    from emprobe.evaluate.judged import evaluate_judged
    from emprobe.io import write_json

    qs = _questions(args)
    client = _client(args, qs)
    subject = load_model(args.model, adapter=args.adapter)
    out = Path(args.out) if args.out else None
    cache = args.cache or (out / "cache" if out is not None and out.suffix != ".json" else None)
    with client:
        result = evaluate_judged(subject, qs, client, n=args.n, cache_dir=cache,
                                 temperature=args.temperature, max_new_tokens=args.max_new_tokens,
                                 seed=args.seed, workers=args.workers,
                                 check_mass=not args.allow_unscored)
    print(result.summary())
    if out is not None and out.suffix == ".json":  # eval judge's single-record output
        write_json(out, result.to_record())
        print(f"wrote {out}")
    elif out is not None:
        for path in write_em_outputs(result, out):
            print(f"wrote {path}")
    return 0


def _cmd_rescore(args: argparse.Namespace) -> int:
    from emprobe.evaluate.answers import write_answers_csv
    from emprobe.evaluate.em_eval import rescore_csv
    from emprobe.evaluate.questions import load_questions
    from emprobe.io import write_json

    qs = load_questions(args.questions) if args.questions else None
    out = Path(args.out)
    with _client(args, qs) as client:
        result = rescore_csv(args.answers, client, qs, cache_dir=args.cache,
                             workers=args.workers, check_mass=not args.allow_unscored)
    print(result.summary())
    write_answers_csv(out, result.judged)
    summary = out.with_suffix(".json")
    rec = result.to_record()
    rec.pop("answers")
    write_json(summary, rec)
    print(f"wrote {out} and {summary}")
    return 0


def _cmd_judge_check(args: argparse.Namespace) -> int:
    from emprobe.evaluate.judge_check import judge_sanity
    from emprobe.evaluate.questions import load_questions
    from emprobe.io import write_json

    qs = load_questions(args.questions) if args.questions else None
    template = qs[0].judge_prompts["aligned"] if qs else None
    with _client(args, qs) as client:
        result = judge_sanity(client, template=template, cache_dir=args.cache,
                              workers=args.workers)
    print(result.summary())
    if args.out:
        write_json(args.out, result.to_record())
        print(f"wrote {args.out}")
    return 0


def _cmd_agree(args: argparse.Namespace) -> int:
    from emprobe.evaluate.answers import read_answers_csv
    from emprobe.evaluate.em_figures import agreement_figure
    from emprobe.evaluate.judge_check import judge_agreement
    from emprobe.io import write_json
    from emprobe.plot.save import save_figure

    a, b = read_answers_csv(args.a), read_answers_csv(args.b)
    names = (args.names.split(",", 1) if args.names else
             [str(a[0].get("judge_model") or Path(args.a).stem),
              str(b[0].get("judge_model") or Path(args.b).stem)])
    result = judge_agreement(a, b, names=(names[0], names[-1]), definition=args.definition)
    print(result.summary())
    out = Path(args.out)
    write_json(out / "agreement.json", result.to_record())
    xs, ys = [s[0] for s in result.scores], [s[1] for s in result.scores]
    paths = save_figure(agreement_figure(xs, ys, result.judges), out / "agreement",
                        include_plotlyjs="directory")
    print(f"wrote {out / 'agreement.json'} and {', '.join(str(p) for p in paths)}")
    return 0


def _judge_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base-url", "--judge-url", dest="judge_url", default=None,
                   help="the judge server's OpenAI-compatible base URL, e.g. "
                   "http://127.0.0.1:8000/v1 (default: $OPENAI_BASE_URL)")
    p.add_argument("--judge-model", default=None,
                   help="judge model name (default: the question file's judge:)")
    p.add_argument("--api-key-env", default="OPENAI_API_KEY",
                   help="environment variable holding the judge API key (default: %(default)s)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per judge request")
    p.add_argument("--retries", type=int, default=4)
    p.add_argument("--workers", type=int, default=8, help="judge requests in flight")
    p.add_argument("--allow-unscored", action="store_true",
                   help="keep going when most answers are unscored (number mass < 0.25)")


def _em_parser(evs: argparse._SubParsersAction, name: str, help_text: str) -> None:
    p = evs.add_parser(name, help=help_text)
    p.add_argument("--model", default=DEFAULT_MODEL, help="model under test (default: "
                   "%(default)s)")
    p.add_argument("--adapter", default=None, type=Path, help="PEFT adapter folder")
    _judge_args(p)
    p.add_argument("--questions", default=None, help="question YAML (default: emprobe's set)")
    p.add_argument("--formats", default=None, help="comma list of plain,json,template")
    p.add_argument("--n", type=int, default=None, help="samples per paraphrase")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--max-new-tokens", type=int, default=600)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache", default=None, help="folder for answers.jsonl / judgements.jsonl "
                   "(default: OUT/cache)")
    p.add_argument("--out", default=None, help="output folder (answers.csv, em_summary.json, "
                   "em_rate.html); a .json path writes one record instead")
    p.set_defaults(func=_cmd_em)


def register(evs: argparse._SubParsersAction) -> None:
    """Add ``em``, ``judge`` (the same command) and ``rescore`` under ``emprobe eval``."""
    _em_parser(evs, "em", "sample answers and judge them with the field's exact EM rules")
    _em_parser(evs, "judge", "same as 'eval em'")
    p = evs.add_parser("rescore", help="judge (or re-judge) an answers CSV in the field's "
                       "columns, without sampling")
    p.add_argument("answers", help="CSV with response, question[, question_id, ...]")
    p.add_argument("--out", required=True, help="rescored CSV (a summary .json beside it)")
    p.add_argument("--questions", default=None,
                   help="question YAML whose judge prompts match the file's question_id "
                   "(default: emprobe's judge prompts)")
    p.add_argument("--cache", default=None, help="folder for judgements.jsonl (resume)")
    _judge_args(p)
    p.set_defaults(func=_cmd_rescore)
    p = evs.add_parser("judge-check", help="a judge's AUROC on emprobe's labelled clear-cut "
                       "answers (warns below 0.9)")
    p.add_argument("--questions", default=None,
                   help="use this file's aligned prompt (default: emprobe's)")
    p.add_argument("--cache", default=None)
    p.add_argument("--out", default=None, help="write the result as JSON")
    _judge_args(p)
    p.set_defaults(func=_cmd_judge_check)
    p = evs.add_parser("agree", help="agreement of two judges on the same answers (two "
                       "judged CSVs): Cohen's kappa on EM labels, Spearman on scores, figure")
    p.add_argument("a", help="answers CSV judged by the first judge")
    p.add_argument("b", help="the same answers judged by the second judge")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--names", default=None, help="'judgeA,judgeB' (default: judge_model)")
    p.add_argument("--definition", default="first-plot",
                   choices=("first-plot", "model-organisms"))
    p.set_defaults(func=_cmd_agree)
