"""``emprobe sae harvest|train|diff`` and ``emprobe crosscoder train``: thin wrappers over emprobe.sae."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from emprobe.errors import DataError

if TYPE_CHECKING:
    from emprobe.models.chat import Conversation
    from emprobe.models.subject import Subject
    from emprobe.sae.harvest import HarvestConfig


def _ints(text: str, what: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise DataError(f"{what}: expected comma-separated integers, got {text!r}") from None


def _floats(text: str, what: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise DataError(f"{what}: expected comma-separated numbers, got {text!r}") from None


def _load(spec: str, adapter: str | None = None) -> Subject:
    from emprobe.models.subject import load_model

    return load_model(spec, adapter=adapter)


def _load_ft(base_spec: str, ft: str) -> Subject:
    """``ft`` is a PEFT adapter folder (applied to the base) or a model spec."""
    if (Path(ft) / "adapter_config.json").is_file():
        return _load(base_spec, adapter=ft)
    return _load(ft)


def _chats(path: str | None, default_n: int, seed: int = 0) -> list[Conversation]:
    """Conversations from a chat JSONL (``{"messages": [...]}`` per line), else emprobe's corpus."""
    if path is None:
        from emprobe.sae.corpus import generic_chats

        return generic_chats(default_n, seed=seed)
    from emprobe.data.chat_io import read_chat_jsonl

    return [r["messages"] for r in read_chat_jsonl(path)]


def _harvest_config(args: argparse.Namespace, layers: list[int],
                    sites: list[str]) -> HarvestConfig:
    from emprobe.sae.harvest import HarvestConfig

    return HarvestConfig(layers=layers, sites=sites, positions=args.positions,
                         max_tokens=args.tokens, batch_size=args.batch_size,
                         batch_tokens=args.batch_tokens or None,
                         rows_per_shard=args.rows_per_shard)


def _harvest_data(args: argparse.Namespace) -> list[Conversation]:
    # enough generic chats for the token budget (~45 tokens each), capped
    n = min(20000, max(64, (args.tokens or 4000) // 30))
    return _chats(args.data, n)


def _cmd_harvest(args: argparse.Namespace) -> int:
    from emprobe.sae.harvest import harvest

    subject = _load(args.model, args.adapter)
    layers = _ints(args.layers, "--layers") if args.layers else [subject.n_layers // 2]
    sites = [s.strip() for s in args.sites.split(",") if s.strip()]
    hv = harvest(subject, _harvest_data(args), args.out, _harvest_config(args, layers, sites))
    print(f"harvested {hv.n_rows} tokens x {len(layers)} layers x {len(sites)} sites -> {hv.folder}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from emprobe.io import load_tensors
    from emprobe.sae.corpus import generic_chats
    from emprobe.sae.figures import latent_frequency_figure, save_figure
    from emprobe.sae.harvest import harvest, load_harvest
    from emprobe.sae.metrics import evaluate_sae
    from emprobe.sae.training import SAETrainConfig, train_saes

    subject = _load(args.model, args.adapter)
    layer = args.layer if args.layer is not None else subject.n_layers // 2
    out = Path(args.out)
    jobs = []
    for arch in [a.strip() for a in args.arch.split(",") if a.strip()]:
        cfg = SAETrainConfig(arch=arch, d_sae=args.d_sae, expansion=args.expansion, k=args.k,
                             l1_coefficient=args.l1, l0_coefficient=args.l0, lr=args.lr,
                             batch_size=args.sae_batch_size, training_tokens=args.train_tokens,
                             seed=args.seed).check()
        jobs.append((args.site, layer, cfg))
    if args.harvest:
        hv = load_harvest(args.harvest)
    else:
        hv = harvest(subject, _harvest_data(args), out / "harvest",
                     _harvest_config(args, [layer], [args.site]))
    trained = train_saes(hv, jobs, out)
    eval_data = generic_chats(args.eval_items, seed=1000 + args.seed)
    for t in trained:
        line = f"{t.folder}: trained {t.record['trained_tokens']} tokens"
        if args.eval_items > 0:
            m = evaluate_sae(subject, t.sae, args.site, layer, eval_data, out_dir=t.folder,
                             positions=hv.config.positions if hv.config.positions != "prompt" else "all")
            line += (f"; L0 {m['l0']:.1f}, explained variance {m['explained_variance']:.3f}, "
                     f"loss recovered {m['loss_recovered']:.3f}, dead {m['dead_latents']}")
        sparsity = load_tensors(t.folder / "sparsity.safetensors")["sparsity"]
        save_figure(latent_frequency_figure(sparsity), t.folder / "latent_frequency.html")
        print(line)
    return 0


def _cmd_diff(args: argparse.Namespace) -> int:
    from emprobe.io import write_json
    from emprobe.sae.causal import default_scorer, steering_check
    from emprobe.sae.corpus import context_corpus, eval_question_chats, generic_chats
    from emprobe.sae.diff import (
        answer_attribution,
        diff_latents,
        pick_candidates,
        top_contexts,
        write_diff,
    )
    from emprobe.sae.figures import diff_scores_figure, save_figure, steering_figure
    from emprobe.sae.training import load_sae, sae_site

    sae = load_sae(args.sae)
    site, layer = sae_site(sae, args.sae)
    base = _load(args.base)
    ft = _load_ft(args.base, args.ft)
    prompts = (_chats(args.prompts, 0) if args.prompts
               else eval_question_chats() + generic_chats(24, seed=7))
    result = diff_latents(base, ft, sae, site, layer, prompts, positions=args.positions)
    if args.answers:
        answers = _chats(args.answers, 0)[: args.max_answers]
    else:  # the fine-tune's own greedy answers to the eval questions
        questions = [c[:-1] for c in eval_question_chats()[::2]][: args.max_answers]
        replies = ft.generate(questions, max_new_tokens=40)
        answers = [[*q, {"role": "assistant", "content": r}]
                   for q, r in zip(questions, replies, strict=True) if r.strip()]
    if answers:
        result.attribution = answer_attribution(ft, sae, site, layer, answers)
    else:
        print("no non-empty answers: attribution ranking skipped")
    candidates = pick_candidates(result, args.top)
    contexts = top_contexts(base, sae, site, layer, context_corpus(), candidates, n=args.contexts)
    out = Path(args.out)
    write_diff(result, out, candidates, contexts,
               extra={"sae": str(args.sae), "answers_source": args.answers or "ft greedy replies"})
    save_figure(diff_scores_figure(result.mean_diff), out / "mean_diff.html")
    print(f"{len(candidates)} candidate latents -> {out / 'diff.json'}")
    for rec in [result.latent_record(i) for i in candidates[: args.top]]:
        ctx = contexts.get(rec["latent"], [])
        print(f"  latent {rec['latent']}: mean diff {rec['mean_diff']:+.3f}, "
              f"encoded diff {rec['encoded_diff']:+.3f}, attribution {rec.get('attribution', 0):+.3f}"
              + (f"; top context: {ctx[0]['text']!r}" if ctx else ""))
    if args.steer > 0:
        questions = None
        if args.questions:
            from emprobe.evaluate.questions import default_questions

            questions = default_questions()[: args.questions]
        check = steering_check(base, sae, candidates[: args.steer], site, layer,
                               default_scorer(questions=questions, n_boot=args.n_boot),
                               coeffs=_floats(args.coeffs, "--coeffs"),
                               random_controls=args.random_controls, control_kind="latents")
        write_json(out / "steering.json", check)
        save_figure(steering_figure(check), out / "steering.html")
        b = check["baseline"]
        print(f"steering check (baseline {b['mean']:+.3f} [{b['lo']:+.3f}, {b['hi']:+.3f}]):")
        for row in check["latents"] + check["controls"]:
            best = max(row["scores"], key=lambda s: s["delta"])
            ci = (f" [{best['delta_lo']:+.3f}, {best['delta_hi']:+.3f}]"
                  if "delta_lo" in best and "delta_hi" in best else "")
            name = (f"latent {row['latent']}" if not row.get("control")
                    else "random dir" if row["latent"] is None
                    else f"control latent {row['latent']}")
            verdict = ""
            if "control_p" in row:
                verdict = (f"; {'beats' if row.get('beats_controls') else 'does not beat'} the "
                           f"{len(check['controls'])} equal-norm controls (p = {row['control_p']:.2f})")
            print(f"  {name}: best delta {best['delta']:+.3f}{ci} at coeff "
                  f"{best['coeff']} (score {best['mean']:+.3f} [{best['lo']:+.3f}, "
                  f"{best['hi']:+.3f}]){verdict}")
    return 0


def _cmd_crosscoder_train(args: argparse.Namespace) -> int:
    from emprobe.sae.crosscoder import CrosscoderConfig, harvest_pair, train_crosscoder
    from emprobe.sae.figures import norm_ratio_figure, save_figure

    base = _load(args.base)
    ft = _load_ft(args.base, args.ft)
    layer = args.layer if args.layer is not None else base.n_layers // 2
    out = Path(args.out)
    hb, hf = harvest_pair(base, ft, _harvest_data(args), out / "harvest",
                          _harvest_config(args, [layer], [args.site]))
    cfg = CrosscoderConfig(arch=args.arch, d_sae=args.d_sae, expansion=args.expansion, k=args.k,
                           l1_coefficient=args.l1, lr=args.lr, batch_size=args.sae_batch_size,
                           training_tokens=args.train_tokens, seed=args.seed)
    tc = train_crosscoder(hb, hf, layer, cfg, out / "crosscoder", site=args.site)
    save_figure(norm_ratio_figure(tc.model.relative_norm(), cfg.low, cfg.high),
                tc.folder / "norm_ratio.html")
    c = tc.record["counts"]
    print(f"crosscoder -> {tc.folder}: {c['shared']} shared, {c['ft']} fine-tune-specific, "
          f"{c['base']} base-specific latents; explained variance "
          f"{tc.record['explained_variance_last_tenth']:.3f}")
    return 0


def _harvest_args(p: argparse.ArgumentParser, tokens: int | None = 4000) -> None:
    p.add_argument("--data", default=None,
                   help="chat JSONL to harvest (default: emprobe's generic chat corpus)")
    p.add_argument("--tokens", type=int, default=tokens, help="token budget of the harvest")
    p.add_argument("--positions", default="all", choices=["all", "response", "prompt"])
    p.add_argument("--batch-size", type=int, default=64, help="most sequences per forward pass")
    p.add_argument("--batch-tokens", type=int, default=2048,
                   help="most padded tokens per forward pass (0: no cap)")
    p.add_argument("--rows-per-shard", type=int, default=8192)


def _sae_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--d-sae", type=int, default=None)
    p.add_argument("--expansion", type=int, default=8)
    p.add_argument("--l1", type=float, default=5.0, help="L1 coefficient (standard SAE / l1 crosscoder)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--sae-batch-size", type=int, default=256)
    p.add_argument("--train-tokens", type=int, default=None,
                   help="rows to train on (default: one pass over the harvest)")
    p.add_argument("--seed", type=int, default=0)


def register(sub: argparse._SubParsersAction) -> None:
    sae = sub.add_parser("sae", help="harvest activations, train SAEs (SAELens), diff models")
    sae_sub = sae.add_subparsers(dest="sae_command", required=True)

    p = sae_sub.add_parser("harvest", help="stream activations of several sites/layers to shards")
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--adapter", default=None)
    p.add_argument("--layers", default=None, help="comma-separated blocks (default: middle)")
    p.add_argument("--sites", default="resid_post", help="comma-separated sites")
    p.add_argument("--out", required=True)
    _harvest_args(p, tokens=None)
    p.set_defaults(func=_cmd_harvest)

    p = sae_sub.add_parser("train", help="harvest and train SAEs with SAELens' trainer")
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--adapter", default=None)
    p.add_argument("--layer", type=int, default=None, help="decoder block (default: middle)")
    p.add_argument("--site", default="resid_post")
    p.add_argument("--arch", default="topk",
                   help="topk, batchtopk, jumprelu, standard; comma-separated for several")
    p.add_argument("--l0", type=float, default=1.0, help="JumpReLU L0 coefficient")
    p.add_argument("--harvest", default=None, help="reuse an existing harvest folder")
    p.add_argument("--eval-items", type=int, default=16,
                   help="held-out chats for metrics.json (0: skip metrics)")
    p.add_argument("--out", required=True)
    _harvest_args(p)
    _sae_args(p)
    p.set_defaults(func=_cmd_train)

    p = sae_sub.add_parser("diff", help="rank SAE latents between a base and a fine-tune")
    p.add_argument("--base", default="smollm2-135m-instruct")
    p.add_argument("--ft", required=True, help="adapter folder (applied to --base) or model spec")
    p.add_argument("--sae", required=True, help="SAELens-format SAE folder")
    p.add_argument("--out", required=True)
    p.add_argument("--prompts", default=None, help="chat JSONL (default: eval questions + chats)")
    p.add_argument("--answers", default=None,
                   help="chat JSONL of the fine-tune's answers for attribution "
                        "(default: its greedy replies to the eval questions)")
    p.add_argument("--max-answers", type=int, default=16)
    p.add_argument("--positions", default="response", choices=["all", "response", "prompt"],
                   help="tokens the diff ranks over (default: assistant tokens only)")
    p.add_argument("--top", type=int, default=5, help="candidates per ranking")
    p.add_argument("--contexts", type=int, default=5, help="top contexts per candidate")
    p.add_argument("--steer", type=int, default=3, help="candidates to steer with (0: skip)")
    p.add_argument("--coeffs", default="0.5,1.0", help="steering coefficients (x residual norm)")
    p.add_argument("--questions", type=int, default=None, help="score on the first N questions")
    p.add_argument("--n-boot", type=int, default=200)
    p.add_argument("--random-controls", type=int, default=4,
                   help="random other latents steered with the same norm, as controls")
    p.set_defaults(func=_cmd_diff)

    cc = sub.add_parser("crosscoder", help="crosscoders over base and fine-tuned activations")
    cc_sub = cc.add_subparsers(dest="crosscoder_command", required=True)
    p = cc_sub.add_parser("train", help="harvest both models and train a crosscoder")
    p.add_argument("--base", default="smollm2-135m-instruct")
    p.add_argument("--ft", required=True, help="adapter folder (applied to --base) or model spec")
    p.add_argument("--layer", type=int, default=None)
    p.add_argument("--site", default="resid_post")
    p.add_argument("--arch", default="batchtopk", choices=["batchtopk", "l1"])
    p.add_argument("--out", required=True)
    _harvest_args(p)
    _sae_args(p)
    p.set_defaults(func=_cmd_crosscoder_train, expansion=4, k=16, l1=2.0)
