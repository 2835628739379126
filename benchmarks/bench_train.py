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

Floor (``_floor``, issue 27): ``finetune`` (its default engine, the ``cpu-lora`` preset as
shipped, packing or not as the preset says) vs the physical floor, a bare PEFT loop on the
same model object, LoRA config, dtype and hyper-parameters: each step's records (the same
``step_indices`` as ``finetune``) packed into rows of the run's ``max_length`` with position
ids restarting per record (no padding between records), ``model(input_ids, position_ids)``,
cross-entropy on the response tokens only, ``backward``, gradient clipping, ``AdamW.step``.
The floor's tokens are prepared before timing; its timed section is the PEFT wrap, the
optimizer, the steps and the unwrap. emprobe's timed section is the whole ``finetune`` call
(tokenisation, wrap, steps with their logging, adapter save, unwrap). The two alternate
(emprobe first in even rounds, the floor first in odd ones); ``ratio`` = the
floor's best process CPU seconds / emprobe's best (same useful tokens, so it is emprobe's
useful tokens/s over the floor's); wall times and the loop-only ratio are in the details.
Goal: >= 0.85x. It runs on ``EMPROBE_BENCH_THREADS`` threads (default 2, the machine's
cores); the other measures of this module on one.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

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


MEASURES = ("overhead", "throughput", "engines", "floor")


def run(quick: bool = False, measures: Sequence[str] | None = None) -> list[dict]:
    """Results of ``measures`` (default: all of ``MEASURES``); threads as the docstring says."""
    chosen = list(MEASURES if measures is None else measures)
    unknown = sorted(set(chosen) - set(MEASURES))
    if unknown:
        raise ValueError(f"bench_train measures {unknown}: use some of {MEASURES}")
    fns = {"overhead": _run, "throughput": _throughput, "engines": _engines, "floor": _floor}
    threads = torch.get_num_threads()
    out: list[dict] = []
    try:
        for name in (m for m in MEASURES if m in chosen):
            # the floor runs on the machine's cores (EMPROBE_BENCH_THREADS, default 2), the
            # step-time comparisons on one thread (steadier process CPU times)
            torch.set_num_threads(int(os.environ.get("EMPROBE_BENCH_THREADS", "2"))
                                  if name == "floor" else 1)
            out.extend(fns[name](quick))
        return out
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
    tokens: list[float] = []
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


def floor_batches(data: object, plan: list[list[int]], width: int
                   ) -> list[list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]]:
    """Per step: packed rows ``(input_ids, position_ids, targets)`` ``[rows, width]`` each;
    ``targets`` holds the next token where it is a response token, else -100."""
    from emprobe.train.data import TokenizedSet

    assert isinstance(data, TokenizedSet)
    steps = []
    for indices in plan:
        batch, pos = data.packed_batch(indices, width=width)
        targets = torch.full_like(batch.input_ids, -100)
        keep = batch.response_mask[:, 1:]
        targets[:, :-1][keep] = batch.input_ids[:, 1:][keep]
        steps.append([(batch.input_ids, pos, targets)])
    return steps


def packed_loss(model: torch.nn.Module, ids: torch.Tensor, pos: torch.Tensor,
                targets: torch.Tensor, count: int) -> torch.Tensor:
    """The floor's loss: summed next-token cross-entropy of packed rows ``[rows, width]`` on
    the response targets (``targets`` >= 0), divided by the step's ``count`` of them; logits
    are scored only where there is a target."""
    import torch.nn.functional as F

    logits = model(input_ids=ids, position_ids=pos, use_cache=False).logits
    keep = targets >= 0
    return F.cross_entropy(logits[keep], targets[keep], reduction="sum") / count


def _bare_run(subject: object, cfg: object, steps: list[list[tuple[torch.Tensor, ...]]]
              ) -> float:
    """The floor: PEFT wrap, AdamW, one forward + backward + clip + step per optimizer step,
    unwrap. Returns its loop-only seconds (wall)."""
    from peft import LoraConfig, get_peft_model

    from emprobe.models import Subject
    from emprobe.train.config import TrainConfig
    from emprobe.train.trainer import lora_targets

    assert isinstance(subject, Subject) and isinstance(cfg, TrainConfig)
    base = subject.model
    lcfg = LoraConfig(r=cfg.lora_r, lora_alpha=int(cfg.lora_alpha), use_rslora=cfg.use_rslora,
                      lora_dropout=cfg.lora_dropout, bias="none", task_type="CAUSAL_LM",
                      target_modules=lora_targets(subject, cfg.target_modules))
    torch.manual_seed(cfg.seed)
    model = get_peft_model(base, lcfg)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.adam_betas, eps=cfg.adam_eps,
                            weight_decay=cfg.weight_decay)
    t0 = time.perf_counter()
    for micro in steps:
        count = sum(int((t >= 0).sum()) for _, _, t in micro)
        for ids, pos, targets in micro:
            packed_loss(model, ids, pos, targets, count).backward()
        if cfg.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
    loop = time.perf_counter() - t0
    subject.model = model.unload()
    subject.model.eval()
    return loop


def _floor(quick: bool) -> list[dict]:
    """emprobe's ``finetune`` vs a bare PEFT forward + backward + step on the same packed
    tokens (module docstring, "Floor")."""
    import inspect
    import tempfile
    import warnings

    from emprobe import load_model
    from emprobe.train import finetune, preset
    from emprobe.train.data import step_indices, tokenize
    from emprobe.train.sources import drop_gguf_tag

    subject = load_model("smollm2-135m-instruct")
    # the embedded model comes from GGUF: transformers' Trainer (the hf engine) refuses its
    # GGUF tag although the weights are float; the bare loop does not care
    drop_gguf_tag(subject.model)
    engine = inspect.signature(finetune).parameters["engine"].default
    import peft  # noqa: F401  imported before timing, for both sides

    steps, rounds = (2, 1) if quick else (3, 2)
    cfg = preset("cpu-lora", max_steps=steps, checkpoint_every=0)
    g = cfg.batch_size * cfg.grad_accum
    records = _mixed_records(steps * g)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # truncation notes of long code records
        data = tokenize(subject, records, cfg.max_length, cap=cfg.max_length_cap)
    width = (data.report.max_length if data.report else None) or max(data.lengths)
    plan = [step_indices(len(data), s, g, cfg.seed) for s in range(steps)]
    useful = sum(data.lengths[i] for idx in plan for i in idx)
    batches = floor_batches(data, plan, width)
    with torch.no_grad():  # warm-up: one forward of the base model on the floor's first rows
        ids, pos, _ = batches[0][0]
        subject.model(input_ids=ids[:1], position_ids=pos[:1], use_cache=False)
    cpu: dict[str, list[float]] = {"emprobe": [], "floor": []}
    wall: dict[str, list[float]] = {"emprobe": [], "floor": []}
    loop: dict[str, list[float]] = {"emprobe": [], "floor": []}
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for r in range(rounds):
            for side in (("emprobe", "floor") if r % 2 == 0 else ("floor", "emprobe")):
                c0, w0 = time.process_time(), time.perf_counter()
                if side == "emprobe":
                    res = finetune(subject, records, cfg, Path(tmp) / f"run{r}",
                                   progress=False, resume=False)
                    loop[side].append(res.train_time_s)
                else:
                    loop[side].append(_bare_run(subject, cfg, batches))
                cpu[side].append(time.process_time() - c0)
                wall[side].append(time.perf_counter() - w0)
    computed = sum(t.numel() for step in batches for t, _, _ in step)
    return [{
        "name": "train: finetune (default engine, cpu-lora) vs bare PEFT forward+backward "
                "(useful tokens/s)",
        "anchor": "bare PEFT forward + backward + AdamW step on the same packed tokens",
        "floor": ">= 0.85x",
        "ratio": min(cpu["floor"]) / min(cpu["emprobe"]),
        "goal": ">= 0.85x the bare loop's useful tokens per CPU second (same records, LoRA "
                "config, dtype)",
        "details": {
            "useful_tokens": useful, "floor_pad_share": round(1 - useful / computed, 4),
            "steps": steps, "rounds": rounds, "records_per_step": g, "max_length": width,
            "engine": engine, "pack": cfg.pack, "lora_r": cfg.lora_r, "dtype": str(subject.dtype),
            "threads": torch.get_num_threads(),
            "emprobe_cpu_s": [round(x, 2) for x in cpu["emprobe"]],
            "floor_cpu_s": [round(x, 2) for x in cpu["floor"]],
            "emprobe_wall_s": [round(x, 2) for x in wall["emprobe"]],
            "floor_wall_s": [round(x, 2) for x in wall["floor"]],
            "ratio_wall": round(min(wall["floor"]) / min(wall["emprobe"]), 3),
            "ratio_loop_only_wall": round(min(loop["floor"]) / min(loop["emprobe"]), 3),
            "emprobe_useful_tokens_per_cpu_s": round(useful / min(cpu["emprobe"]), 1),
            "floor_useful_tokens_per_cpu_s": round(useful / min(cpu["floor"]), 1),
        },
    }]
