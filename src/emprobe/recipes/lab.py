"""``Lab``: the shared workbench of recipes (train, load, score, report) with sensible sizes.

A recipe is a function ``run(lab: Lab) -> None`` that trains and evaluates through the
lab and adds sections to ``lab.report``. Fine-tunes are cached by name inside the
output folder, so re-running a recipe resumes instead of retraining.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from emprobe.io import write_json
from emprobe.report import Report


@dataclass
class LabConfig:
    """Sizes for recipes. ``quick`` uses a tiny random model and a few steps."""

    model: str = "smollm2-135m-instruct"
    n_train: int = 64
    n_heldout: int = 16
    steps: int = 16
    batch_size: int = 4
    max_length: int = 112
    lr: float = 1e-3
    lora_r: int = 8
    seed: int = 0
    n_boot: int = 1000
    quick: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def quick_config(cls, **overrides: Any) -> LabConfig:
        base = cls(model="tiny-llama", n_train=8, n_heldout=4, steps=2, batch_size=4,
                   max_length=512, n_boot=100, quick=True)
        for k, v in overrides.items():
            setattr(base, k, v)
        return base


class Lab:
    """Train / load / score helpers bound to one output folder and one config."""

    def __init__(self, out: str | os.PathLike[str], config: LabConfig, title: str) -> None:
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.cfg = config
        self.report = Report(title)
        self.report.meta({"model": config.model, "seed": config.seed,
                          "training": f"LoRA r {config.lora_r}, lr {config.lr}, {config.steps} "
                                      f"steps x batch {config.batch_size}",
                          "train examples": config.n_train, "held-out": config.n_heldout})
        if config.quick:
            self.report.note("Quick mode: tiny random model; numbers only show the pipeline runs.",
                             kind="warning")
        self.results: dict[str, Any] = {"config": asdict(config)}
        self._base: Any = None

    # -- data ------------------------------------------------------------------------------
    def data(self, task: str, variant: str = "bad", n: int | None = None,
             seed_offset: int = 0) -> list[dict[str, Any]]:
        from emprobe.data.generators import generate

        return generate(task, n or self.cfg.n_train, seed=self.cfg.seed + seed_offset,
                        variant=variant)

    def split(self, task: str, variant: str = "bad") -> tuple[list[dict], list[dict]]:
        """(train, held-out) of one generated task."""
        from emprobe.data.transforms import split

        recs = self.data(task, variant, n=self.cfg.n_train + self.cfg.n_heldout)
        return split(recs, held_out=self.cfg.n_heldout, seed=self.cfg.seed)

    # -- models ----------------------------------------------------------------------------
    def train_config(self, **overrides: Any) -> Any:
        from emprobe.train.config import preset

        c = self.cfg
        settings = dict(max_steps=c.steps, batch_size=c.batch_size, max_length=c.max_length,
                        lr=c.lr, lora_r=c.lora_r, lora_alpha=2.0 * c.lora_r, seed=c.seed,
                        checkpoint_every=0)
        settings.update(overrides)  # a recipe may change any of them (e.g. a second seed)
        return preset("cpu-lora", **settings)

    def train(self, name: str, records: Any, interventions: Any = (), retain: Any = None,
              subject: Any = None, **overrides: Any) -> Path:
        """Fine-tune (or reuse a finished run of the same name); returns the adapter folder."""
        from emprobe.train import finetune

        out = self.out / "runs" / name
        adapter = out / "adapter"
        if (adapter / "adapter_config.json").is_file() and (out / "DONE").is_file():
            return adapter
        result = finetune(subject if subject is not None else self.cfg.model, records,
                          self.train_config(**overrides), out, interventions=list(interventions),
                          retain=retain, resume=True, progress=not self.cfg.quick)
        (out / "DONE").write_text("ok\n")
        self.results.setdefault("runs", {})[name] = result.to_record()
        return result.adapter_dir

    def base(self) -> Any:
        import emprobe

        if self._base is None:
            self._base = emprobe.load_model(self.cfg.model, seed=self.cfg.seed)
        return self._base

    def load(self, adapter: Path | None = None) -> Any:
        import emprobe

        if adapter is None:
            return self.base()
        return emprobe.load_model(self.cfg.model, adapter=adapter, seed=self.cfg.seed)

    # -- evaluation ------------------------------------------------------------------------
    def score(self, subject: Any, system: str | None = None) -> Any:
        from emprobe.evaluate.local import local_score

        return local_score(subject, n_boot=self.cfg.n_boot, seed=self.cfg.seed, system=system)

    def task_loss(self, subject: Any, records: Any) -> dict[str, float]:
        from emprobe.geometry.connectivity import response_loss

        return response_loss(subject, records, n_boot=200, seed=self.cfg.seed)

    @staticmethod
    def score_row(name: str, score: Any, **extra: Any) -> dict[str, Any]:
        est = score.per_answer
        return {"name": name, "misalignment": est.mean, "misalignment_lo": est.lo,
                "misalignment_hi": est.hi, "pref_rate": score.pref_rate.mean, **extra}

    def generic(self, n_full: int = 24) -> list[Any]:
        """Neutral chat (never the training data) for activation directions."""
        from emprobe.sae.corpus import generic_chats

        return generic_chats(6 if self.cfg.quick else n_full, seed=self.cfg.seed + 101)

    def assess(self, name: str, subject: Any, held: list[dict[str, Any]],
               **extra: Any) -> tuple[dict[str, Any], Any]:
        """Local misalignment score + held-out task loss -> (trade-off row, LocalScore)."""
        score = self.score(subject)
        loss = self.task_loss(subject, held)
        row = self.score_row(name, score, task_loss=loss["mean"], task_loss_lo=loss["lo"],
                             task_loss_hi=loss["hi"], **extra)
        return row, score

    def versus(self, ref_name: str, ref: Any, others: dict[str, Any]) -> list[dict[str, Any]]:
        """Paired (by question) differences ``other - ref`` of the margin, each with a note."""
        from emprobe.evaluate.local import compare
        from emprobe.report import significance_note

        rows = []
        for name, score in others.items():
            est = compare(ref, score, n_boot=self.cfg.n_boot, seed=self.cfg.seed,
                          labels=(ref_name, name)).per_answer
            self.report.note(significance_note(est.lo, est.hi, what=f"{name} minus {ref_name}",
                                               unit="nats"))
            rows.append({"name": name, "vs": ref_name, "delta": est.mean, "lo": est.lo,
                         "hi": est.hi})
        return rows

    # -- output ----------------------------------------------------------------------------
    def finish(self) -> Path:
        write_json(self.out / "results.json", self.results)
        return self.report.save(self.out / "report.html")
