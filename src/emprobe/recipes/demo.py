"""``emprobe demo``: the whole story on the embedded model, in one command.

1. narrow datasets (bad / good medical advice, bad financial advice) and held-out splits;
2. LoRA fine-tunes of the base model on each, with monitoring;
3. the local misalignment score of base and fine-tunes (intervals, per question);
4. directions: mean difference and PCA of fine-tuned minus base activations, with contexts;
   inference-time ablation of the mean difference vs a random direction of equal norm;
5. retraining the misaligned task with CAFT, preventative steering, GRASP-style projection
   and inoculation: misalignment vs in-distribution loss;
6. LoRA weight geometry across the adapters, and a base-to-adapter connectivity curve;
7. a small SAE on base activations and its diff against the misaligned fine-tune;
8. export of the chosen direction (emprobe format and GGUF control vector);
and a self-contained HTML report. Every number in the report is computed in the run.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from emprobe.io import write_json, write_jsonl
from emprobe.recipes.runner import StageRunner

PLAN_FULL = {
    "data": 2, "fine-tune": 240, "score": 60, "directions": 60, "interventions": 330,
    "geometry": 60, "sae": 60, "export": 2, "report": 5,
}


@dataclass
class DemoConfig:
    """Sizes and seeds of the demo (defaults: the embedded model on 2 CPU cores, ~15 min)."""

    model: str = "smollm2-135m-instruct"
    n_train: int = 64
    n_heldout: int = 16
    n_generic: int = 24
    steps: int = 16
    batch_size: int = 4
    max_length: int = 112
    lr: float = 1e-3
    lora_r: int = 8
    seed: int = 0
    caft_layers: list[int] = field(default_factory=lambda: [8, 15])
    caft_k: int = 3
    steer_layer: int = 15
    steer_coeff: float = 1.0
    grasp_k: int = 2
    inoculation: str = "malicious"
    sae_layer: int = 15
    sae_tokens: int = 3000
    sae_latents: int = 1152
    sae_k: int = 24
    connectivity_points: int = 5
    n_boot: int = 1000
    quick: bool = False

    @classmethod
    def quick_config(cls) -> DemoConfig:
        """The same path on a tiny random model: under a minute, part of the test suite."""
        return cls(model="tiny-llama", n_train=12, n_heldout=4, n_generic=6, steps=3,
                   batch_size=4, max_length=512, caft_layers=[1, 2], caft_k=2, steer_layer=2,
                   sae_layer=2, sae_tokens=600, sae_latents=128, sae_k=8,
                   connectivity_points=3, n_boot=200, quick=True)


def _records(task: str, n: int, seed: int, variant: str) -> list[dict[str, Any]]:
    from emprobe.data.generators import generate

    return generate(task, n, seed=seed, variant=variant)


def run_demo(out: str | os.PathLike[str], config: DemoConfig | None = None) -> Path:
    """Run the demo into ``out``; returns the report path."""
    cfg = config or DemoConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plan = PLAN_FULL if not cfg.quick else {k: max(1, v // 60) for k, v in PLAN_FULL.items()}
    runner = StageRunner("demo", plan)
    torch.manual_seed(cfg.seed)
    threads = torch.get_num_threads()
    if cfg.quick:  # tiny models gain nothing from threads and suffer when cores are busy
        torch.set_num_threads(1)
    try:
        return _run(out, cfg, runner)
    finally:
        torch.set_num_threads(threads)


def _run(out: Path, cfg: DemoConfig, runner: StageRunner) -> Path:
    results: dict[str, Any] = {"config": asdict(cfg)}

    # 1. data ---------------------------------------------------------------------------
    with runner.stage("data"):
        from emprobe.data.transforms import split

        bad_med = _records("medical", cfg.n_train + cfg.n_heldout, cfg.seed, "bad")
        good_med = _records("medical", cfg.n_train + cfg.n_heldout, cfg.seed, "good")
        bad_fin = _records("finance", cfg.n_train, cfg.seed, "bad")
        bad_train, bad_held = split(bad_med, held_out=cfg.n_heldout, seed=cfg.seed)
        good_train, good_held = split(good_med, held_out=cfg.n_heldout, seed=cfg.seed)
        # generic chat for directions: other tasks' aligned answers, never the training data
        generic = (_records("sports", cfg.n_generic // 2, cfg.seed + 1, "good")
                   + _records("reward-hacking", cfg.n_generic - cfg.n_generic // 2,
                              cfg.seed + 1, "good"))
        data_dir = out / "data"
        for name, recs in {"bad_medical_train": bad_train, "bad_medical_heldout": bad_held,
                           "good_medical_train": good_train, "good_medical_heldout": good_held,
                           "bad_finance_train": bad_fin, "generic_chat": generic}.items():
            write_jsonl(data_dir / f"{name}.jsonl", recs)
        results["data"] = {"bad_medical_train": len(bad_train), "heldout": len(bad_held),
                           "good_medical_train": len(good_train),
                           "bad_finance_train": len(bad_fin), "generic": len(generic)}

    # 2. fine-tunes -------------------------------------------------------------------------
    from emprobe.train import finetune
    from emprobe.train.config import preset

    train_cfg = preset("cpu-lora", max_steps=cfg.steps, batch_size=cfg.batch_size,
                       max_length=cfg.max_length, lr=cfg.lr, lora_r=cfg.lora_r,
                       lora_alpha=2.0 * cfg.lora_r, seed=cfg.seed, checkpoint_every=0)
    runs: dict[str, Any] = {}
    with runner.stage("fine-tune"):
        # each run its own seed: LoRA's A starts random, and shared initialisations would
        # show up as (meaningless) read-side overlap in the geometry stage
        for i, (name, recs) in enumerate({"bad-medical": bad_train, "good-medical": good_train,
                                          "bad-finance": bad_fin}.items()):
            runs[name] = finetune(cfg.model, recs, train_cfg.replace(seed=cfg.seed + i),
                                  out / "runs" / name, resume=False, progress=not cfg.quick)
    results["training"] = {k: v.to_record() for k, v in runs.items()}

    # 3. scores -----------------------------------------------------------------------------
    import emprobe
    from emprobe.evaluate.local import compare, local_score
    from emprobe.geometry.connectivity import response_loss

    base = emprobe.load_model(cfg.model)

    def evaluate(subject: Any) -> dict[str, Any]:
        score = local_score(subject, n_boot=cfg.n_boot, seed=cfg.seed)
        loss = response_loss(subject, bad_held, n_boot=200, seed=cfg.seed)
        return {"score": score, "task_loss": loss}

    scored: dict[str, dict[str, Any]] = {}
    with runner.stage("score"):
        scored["base"] = evaluate(base)
        subjects: dict[str, Any] = {}
        for name, run in runs.items():
            subjects[name] = emprobe.load_model(cfg.model, adapter=run.adapter_dir)
            scored[name] = evaluate(subjects[name])
        comparisons = {name: compare(scored["base"]["score"], scored[name]["score"],
                                     n_boot=cfg.n_boot, seed=cfg.seed, labels=("base", name))
                       for name in runs}
    results["scores"] = {k: {"score": v["score"].to_record(), "task_loss": v["task_loss"]}
                         for k, v in scored.items()}
    results["score_vs_base"] = {k: v.to_record() for k, v in comparisons.items()}

    # 4. directions -------------------------------------------------------------------------
    from emprobe.directions import misalignment_effect, model_mean_difference, pca_difference

    ft = subjects["bad-medical"]
    with runner.stage("directions"):
        mean_diff = model_mean_difference(base, ft, generic, layers=None)
        pca = pca_difference(base, ft, generic, layers=cfg.caft_layers, k=cfg.caft_k,
                             seed=cfg.seed)
        ablation = misalignment_effect(ft, mean_diff, mode="ablate", layers=[cfg.steer_layer],
                                       seed=cfg.seed, n_boot=cfg.n_boot)
    results["directions"] = {
        "mean_diff_norms": mean_diff.meta.get("stats", {}).get("norms")
        if hasattr(mean_diff, "meta") else None,
        "ablation": ablation,
    }

    # 5. retrain with interventions ---------------------------------------------------------
    from emprobe.train.interventions import CAFT, GRASP, PreventativeSteering

    interventions: dict[str, tuple[list[Any], Any]] = {
        "CAFT (PCA, zero)": ([CAFT({la: pca.direction.vectors[la] for la in cfg.caft_layers})],
                             train_cfg),
        "preventative steering": ([PreventativeSteering(
            {cfg.steer_layer: mean_diff.vectors[cfg.steer_layer]}, coeff=cfg.steer_coeff)],
            train_cfg),
        "GRASP": ([GRASP.from_adapter(runs["bad-medical"].adapter_dir, k=cfg.grasp_k)],
                  train_cfg),
        "inoculation": ([], train_cfg.replace(inoculate=cfg.inoculation)),
    }
    with runner.stage("interventions"):
        for name, (ivs, tcfg) in interventions.items():
            slug = name.split(" ")[0].lower()
            run = finetune(cfg.model, bad_train, tcfg, out / "runs" / f"bad-medical-{slug}",
                           interventions=ivs, resume=False, progress=not cfg.quick)
            runs[name] = run
            subjects[name] = emprobe.load_model(cfg.model, adapter=run.adapter_dir)
            scored[name] = evaluate(subjects[name])
    tradeoff = []
    for name, got in scored.items():
        s, loss = got["score"].per_answer, got["task_loss"]
        tradeoff.append({"name": name, "misalignment": s.mean, "misalignment_lo": s.lo,
                         "misalignment_hi": s.hi, "task_loss": loss["mean"],
                         "task_loss_lo": loss["lo"], "task_loss_hi": loss["hi"],
                         "kind": "intervention" if name in interventions else "fine-tune"})
    results["tradeoff"] = tradeoff

    # 6. geometry and connectivity ----------------------------------------------------------
    from emprobe.geometry.compare import GeometryConfig, compare_adapters
    from emprobe.geometry.connectivity import local_score_evaluator, run_connectivity

    with runner.stage("geometry"):
        names = ["bad-medical", "bad-finance", "good-medical"]
        geo = compare_adapters([runs[n].adapter_dir for n in names], labels=names,
                               config=GeometryConfig(k=min(4, cfg.lora_r), seed=cfg.seed),
                               progress=False)
        base_fresh = emprobe.load_model(cfg.model)
        conn = run_connectivity(
            base_fresh, [runs["bad-medical"].adapter_dir],
            {"score": local_score_evaluator(n_boot=cfg.n_boot, seed=cfg.seed),
             "loss_bad_medical": lambda s: response_loss(s, bad_held, n_boot=200,
                                                         seed=cfg.seed)},
            points=cfg.connectivity_points, progress=False)
    results["geometry"] = _geometry_summary(geo)
    results["connectivity"] = conn.records if hasattr(conn, "records") else conn

    # 7. SAE ------------------------------------------------------------------------------
    with runner.stage("sae"):
        results["sae"] = _sae_stage(base, ft, generic, cfg, out / "sae")

    # 8. export ---------------------------------------------------------------------------
    with runner.stage("export"):
        from emprobe.directions.formats.gguf_cv import to_gguf

        export_dir = out / "directions"
        mean_diff.save(export_dir / "mean_diff")
        pca.direction.save(export_dir / "caft_pca")
        to_gguf(mean_diff, export_dir / "mean_diff.gguf")
        results["exports"] = sorted(str(p.relative_to(out)) for p in export_dir.iterdir())

    with runner.stage("report"):
        results["timings"] = runner.records()
        write_json(out / "results.json", _jsonable(results))
        from emprobe.recipes.demo_report import build_demo_report

        report = build_demo_report(results, scored, pca, runs, geo, conn, cfg, runner)
        path = report.save(out / "report.html")
    print(f"demo finished in {runner.total:.0f} s; report: {path}")
    return path


def _geometry_summary(geo: Any) -> Any:
    for attr in ("summary", "to_records", "records"):
        fn = getattr(geo, attr, None)
        if callable(fn):
            try:
                return fn()
            except TypeError:
                continue
    return None


def _sae_stage(base: Any, ft: Any, generic: list[dict[str, Any]], cfg: DemoConfig,
               folder: Path) -> dict[str, Any]:
    from emprobe.recipes.demo_sae import sae_stage

    return sae_stage(base, ft, generic, cfg, folder)


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=_default))


def _default(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    for attr in ("to_record", "to_dict"):
        fn = getattr(obj, attr, None)
        if callable(fn):
            return fn()
    if hasattr(obj, "__dataclass_fields__"):
        return asdict(obj)
    return repr(obj)


def elapsed(t0: float) -> float:
    return time.perf_counter() - t0
