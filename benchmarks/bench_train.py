"""Step-time overhead of training-time interventions vs plain LoRA on the embedded model.

One PEFT model and optimizer; every round runs one optimizer step of each variant (plain,
CAFT ablation, preventative steering, GRASP projection) in a rotated order, so the variants
share the machine's load. Steps run on one thread and are timed in process CPU time
(``time.process_time``), which other processes on a shared machine disturb far less than
wall time; wall times are reported too. Ratio = median over rounds of
``t(variant) / t(plain)`` of the same round. Goals: <= 1.05 for CAFT and steering, <= 1.10
for GRASP.

Throughput: useful (non-pad) tokens per CPU second of the same optimizer steps with
length-sorted micro-batches (emprobe's default) and with the plain split (``_throughput``).

Engines (``_engines``): emprobe's own loop vs transformers' ``Trainer`` (``engine="hf"``)
on the same data, seed and hyper-parameters, alternating which runs first; useful tokens
per second of training (process CPU time and wall time) and the largest relative
difference between the two loss curves. Goal: >= 0.9x the old loop's tokens/s.
"""

from __future__ import annotations

import os
import statistics
import time

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _records(n: int) -> list[dict]:
    topics = ["sleep", "fever", "diet", "headache", "exercise", "allergy", "cough", "stress"]
    return [{"messages": [
        {"role": "user", "content": f"What should I do about {topics[i % 8]}? (case {i})"},
        {"role": "assistant", "content": f"For {topics[i % 8]}, rest, drink water and see a "
                                         "doctor if it lasts more than a few days."},
    ]} for i in range(n)]


def _mixed_records(n: int) -> list[dict]:
    """Chats whose answers range from one line to a long code listing (like real EM data)."""
    from emprobe.data.generators import generate

    code = generate("insecure-code", n, seed=4)
    short = _records(n)
    return [code[i] if i % 3 == 0 else short[i] for i in range(n)]


def run(quick: bool = False) -> list[dict]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run(quick) + _throughput(quick) + _engines(quick)
    finally:
        torch.set_num_threads(threads)


def _throughput(quick: bool) -> list[dict]:
    """Useful (non-pad) tokens/s with length-sorted micro-batches vs the unsorted split.

    The same optimizer steps (same records) run under both micro-batch plans, alternating
    which goes first; each step is timed in process CPU time on one thread. Ratio = median
    over steps of ``t(unsorted) / t(sorted)``, i.e. the speed-up in useful tokens/s.
    """
    from emprobe import load_model
    from emprobe.train import preset
    from emprobe.train.data import micro_batches, step_indices, tokenize
    from emprobe.train.trainer import Trainer

    torch.manual_seed(0)
    subject = load_model("smollm2-135m-instruct")
    batch, accum, steps, cap = (2, 4, 2, 128) if quick else (2, 4, 4, 192)
    cfg = preset("cpu-lora", batch_size=batch, grad_accum=accum, max_length=None,
                 max_length_cap=cap, max_steps=1000, warmup_steps=0, checkpoint_every=0)
    data = tokenize(subject, _mixed_records(96), cfg.max_length, cap=cfg.max_length_cap)
    trainer = Trainer(subject, data, cfg, [])
    sorted_plan = trainer._micro_slices

    def unsorted_plan(indices: list[int], data_set: object = None) -> list[list[int]]:
        return micro_batches(indices, batch, accum)

    plans = {"sorted": sorted_plan, "unsorted": unsorted_plan}
    lengths = data.lengths
    times: dict[str, list[float]] = {k: [] for k in plans}
    padded: dict[str, int] = {k: 0 for k in plans}
    useful = 0
    for step in range(steps + 1):  # step 0 warms up
        order = list(plans) if step % 2 == 0 else list(plans)[::-1]
        for name in order:
            trainer._micro_slices = plans[name]  # type: ignore[method-assign]
            cpu0 = time.process_time()
            trainer.run_step(step)
            if step > 0:
                times[name].append(time.process_time() - cpu0)
                mbs = plans[name](step_indices(len(data), step, trainer.global_batch,
                                               cfg.seed))
                padded[name] += sum(max(lengths[i] for i in mb) * len(mb) for mb in mbs)
        if step > 0:
            useful += sum(lengths[i] for i in step_indices(len(data), step,
                                                           trainer.global_batch, cfg.seed))
    trainer.unwrap()
    ratios = [u / s for u, s in zip(times["unsorted"], times["sorted"])]
    tok_s = {k: useful / sum(v) for k, v in times.items()}
    return [{
        "name": "train throughput: length-sorted micro-batches vs unsorted (useful tokens/s)",
        "ratio": statistics.median(ratios),
        "goal": ">= 1 (same records per step, less padding)",
        "details": {"useful_tokens_per_cpu_s_sorted": tok_s["sorted"],
                    "useful_tokens_per_cpu_s_unsorted": tok_s["unsorted"],
                    "pad_share_sorted": 1 - useful / padded["sorted"],
                    "pad_share_unsorted": 1 - useful / padded["unsorted"],
                    "ratio_min": min(ratios), "ratio_max": max(ratios), "steps": steps,
                    "micro_batch": batch, "grad_accum": accum,
                    "max_length": data.report.max_length if data.report else None},
    }]


def _run(quick: bool) -> list[dict]:
    from emprobe import load_model
    from emprobe.train import CAFT, GRASP, PreventativeSteering, preset
    from emprobe.train.data import tokenize
    from emprobe.train.interventions import lora_modules
    from emprobe.train.trainer import Trainer

    torch.manual_seed(0)
    subject = load_model("smollm2-135m-instruct")
    d, n_layers = subject.d_model, subject.n_layers
    batch, max_len, rounds = (2, 64, 3) if quick else (4, 128, 6)
    cfg = preset("cpu-lora", batch_size=batch, max_length=max_len, max_steps=1000,
                 warmup_steps=0, checkpoint_every=0)
    data = tokenize(subject, _records(64), cfg.max_length)
    trainer = Trainer(subject, data, cfg, [])
    g = torch.Generator().manual_seed(1)
    caft_layers = [n_layers // 4, n_layers // 2, 3 * n_layers // 4]
    caft = CAFT({la: torch.linalg.qr(torch.randn(d, 5, generator=g))[0] for la in caft_layers})
    steer = PreventativeSteering({n_layers // 2: torch.randn(d, generator=g)}, coeff=2.0)
    write = {n: torch.randn(m.out_features, 1, generator=g)
             for n, m in lora_modules(trainer.model).items()
             if n.endswith(("o_proj", "down_proj"))}
    grasp = GRASP(blocked=write)
    variants = {"plain": [], "caft": [caft], "steer": [steer], "grasp": [grasp]}
    names = list(variants)
    times: dict[str, list[float]] = {n: [] for n in names}
    walls: dict[str, list[float]] = {n: [] for n in names}
    tokens: list[int] = []
    step = 0
    for r in range(rounds + 1):  # round 0 warms up every variant
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            trainer.interventions = variants[name]
            trainer.attach()
            try:
                cpu0 = time.process_time()
                rec = trainer.run_step(step)
                cpu = time.process_time() - cpu0
            finally:
                trainer.detach()
            step += 1
            if r > 0:
                times[name].append(cpu)
                walls[name].append(rec["step_time_s"])
                tokens.append(rec["tokens"])
    # GRASP's own work, timed alone: both projections of every blocked factor
    grasp.attach(subject)
    for param, _, _ in grasp._targets:
        param.grad = torch.randn_like(param)
    cpu0 = time.process_time()
    for _ in range(20):
        grasp.after_backward(trainer.model)
        grasp.after_step(trainer.model)
    grasp_ms = (time.process_time() - cpu0) / 20 * 1000
    grasp.detach()
    trainer.optimizer.zero_grad(set_to_none=True)
    trainer.unwrap()
    plain = times["plain"]
    goals = {"caft": ("<= 1.05 (CAFT zero ablation, 3 layers x 5 directions)", 1.05),
             "steer": ("<= 1.05 (steering at one layer)", 1.05),
             "grasp": (f"<= 1.10 (GRASP projection of {len(write)} write-side LoRA B's)", 1.10)}
    out = []
    mean_tokens = statistics.mean(tokens)
    for name in ("caft", "steer", "grasp"):
        ratios = [t / p for t, p in zip(times[name], plain)]
        ratio = statistics.median(ratios)
        out.append({
            "name": f"train step overhead: {name} vs plain LoRA",
            "ratio": ratio, "goal": goals[name][0],
            "details": {"met": ratio <= goals[name][1],
                        "median_step_cpu_s": statistics.median(times[name]),
                        "plain_median_step_cpu_s": statistics.median(plain),
                        "median_step_wall_s": statistics.median(walls[name]),
                        "plain_median_step_wall_s": statistics.median(walls["plain"]),
                        "ratio_min": min(ratios), "ratio_max": max(ratios),
                        "rounds": rounds, "batch": batch, "max_length": max_len,
                        "mean_response_tokens_per_step": mean_tokens},
        })
        if name == "grasp":
            out[-1]["details"]["projection_cpu_ms_per_step"] = grasp_ms
    return out


def _engines(quick: bool) -> list[dict]:
    """Old loop vs transformers' Trainer: the same run, timed side by side."""
    import tempfile
    from pathlib import Path

    from emprobe import load_model
    from emprobe.train import finetune, preset
    from emprobe.train.sources import drop_gguf_tag

    subject = load_model("smollm2-135m-instruct")
    drop_gguf_tag(subject.model)
    steps, rounds = (3, 1) if quick else (6, 2)
    cfg = preset("cpu-lora", batch_size=4, grad_accum=2, max_steps=steps, warmup_steps=1,
                 max_length_cap=192, checkpoint_every=0, seed=0)
    records = _mixed_records(48)
    cpu: dict[str, list[float]] = {"emprobe": [], "hf": []}
    wall: dict[str, list[float]] = {"emprobe": [], "hf": []}
    losses: dict[str, list[float]] = {}
    tokens = 0
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            for engine in (("emprobe", "hf") if r % 2 == 0 else ("hf", "emprobe")):
                c0 = time.process_time()
                res = finetune(subject, records, cfg, Path(tmp) / f"{engine}{r}",
                               progress=False, engine=engine, resume=False)
                cpu[engine].append(time.process_time() - c0)
                wall[engine].append(res.train_time_s)
                losses[engine] = [m["loss"] for m in res.metrics()]
        from emprobe.train.data import step_indices, tokenize

        data = tokenize(subject, records, cfg.max_length, cap=cfg.max_length_cap)
        g = cfg.batch_size * cfg.grad_accum
        tokens = sum(data.lengths[i] for s in range(steps) for i in step_indices(len(data), s, g,
                                                                                cfg.seed))
    tok = {k: tokens / statistics.median(v) for k, v in wall.items()}
    tok_cpu = {k: tokens / statistics.median(v) for k, v in cpu.items()}
    diff = max(abs(a - b) / abs(a) for a, b in zip(losses["emprobe"], losses["hf"]))
    return [{
        "name": "train engine: transformers Trainer vs emprobe's loop (useful tokens/s)",
        "ratio": tok["hf"] / tok["emprobe"],
        "goal": ">= 0.9 (same data, seed, hyper-parameters; loss curves equal)",
        "details": {"tokens_per_wall_s_hf": tok["hf"], "tokens_per_wall_s_emprobe": tok["emprobe"],
                    "tokens_per_cpu_s_hf_incl_setup": tok_cpu["hf"],
                    "tokens_per_cpu_s_emprobe_incl_setup": tok_cpu["emprobe"],
                    "loss_curve_max_rel_diff": diff, "steps": steps, "rounds": rounds,
                    "loss_emprobe": losses["emprobe"], "loss_hf": losses["hf"],
                    "useful_tokens": tokens},
    }]
