"""``Lab``: the shared workbench of recipes (train, load, score, claim, report) with sizes.

A recipe is a function ``run(lab: Lab) -> None`` that trains and evaluates through the
lab, adds sections to ``lab.report`` and states its verdict with ``lab.claim(...)``.

Fine-tunes are cached honestly: ``lab.train(name, ...)`` writes ``runs/<name>-<hash>/``,
where the hash covers everything that decides the weights (model, the resolved
``TrainConfig``, the training and retain records, the interventions' type and tensors,
device and dtype). A finished run is reused only when its stored identity equals the
requested one; anything else trains a new folder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
import typing
from collections.abc import Mapping, Sequence
from dataclasses import InitVar, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

from emprobe.errors import ConfigError, DataError
from emprobe.evaluate.stats import as_estimate
from emprobe.io import read_json, write_json
from emprobe.recipes.config import (
    RecipeOptions,
    check_types,
    config_from_dict,
    resolve_device,
    resolve_dtype,
)
from emprobe.recipes.verdict import ClaimFields
from emprobe.report import Report
from emprobe.train.config import TrainConfig, preset

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

    from emprobe.data.chat_io import Record
    from emprobe.evaluate.local import LocalScore
    from emprobe.evaluate.questions import Question
    from emprobe.models.chat import Conversation
    from emprobe.models.subject import Subject
    from emprobe.train.interventions import Intervention

Records = Sequence[Mapping[str, object]]
"""Chat records as training and held-out data (``Lab.data`` / ``Lab.split``)."""



class VersusRow(TypedDict):
    """One paired difference of ``Lab.versus``: ``name`` minus ``vs`` (margin, nats per
    answer) with its 95 % interval."""

    name: str
    vs: str
    delta: float
    lo: float
    hi: float


class ClaimBlock(ClaimFields, total=False):
    """``results["claim"]`` (``Lab.claim``): the seed claim, what was measured, its
    ``{mean, lo, hi}`` value, the expected side of ``null``, the conditions and the verdict;
    ``why`` when given."""

    why: str


VERDICTS = ("reproduced", "partial", "not reproduced", "not significant")
DTYPES = ("auto", "float32", "fp32", "bfloat16", "bf16", "float16", "fp16")
SCORE_COLUMNS = ["name", "misalignment", "misalignment_lo", "misalignment_hi"]
"""The first table columns of ``Lab.score_row`` records: the margin with its interval."""


def _default_train() -> TrainConfig:
    """The fine-tunes' settings of the CPU default (the ``cpu-lora`` preset, 16 steps)."""
    return preset("cpu-lora", max_steps=16, epochs=1.0, batch_size=4, grad_accum=1,
                  max_length=112, lr=1e-3, lora_r=8, lora_alpha=16.0, use_rslora=True,
                  warmup_steps=2, lr_schedule="constant", seed=0, checkpoint_every=0,
                  # the recipes' records are 50-112 tokens in rows of 112 and sorted by length
                  # within a step, so packing would save little; unpacked keeps run identities
                  pack=False)


TRAIN_KEYS: dict[str, str] = {
    "steps": "max_steps", "batch_size": "batch_size", "grad_accum": "grad_accum",
    "max_length": "max_length", "lr": "lr", "lora_r": "lora_r", "lora_alpha": "lora_alpha",
    "use_rslora": "use_rslora", "warmup_steps": "warmup_steps", "lr_schedule": "lr_schedule"}
"""Flat keys (config files, flags, saved ``results.json`` configs) -> ``TrainConfig`` fields."""


def _record_run(runs: dict[str, dict[str, object]], name: str, record: dict[str, object]) -> None:
    """``runs[name]`` = the latest run of ``name``; an earlier run of that name with another
    identity (another seed, other data) stays as ``runs["<name>-<key>"]``, so a recipe that
    trains one name on several seeds keeps every seed's record."""
    previous = runs.get(name)
    if previous is not None and previous.get("key") != record["key"]:
        runs[f"{name}-{previous['key']}"] = previous
    runs.pop(f"{name}-{record['key']}", None)
    runs[name] = record


@dataclass
class LabConfig:
    """Sizes, devices and seeds of a recipe run; the fine-tunes' settings are ``train``.

    Defaults: the embedded SmolLM2-135M on 2 CPU cores (a LoRA step of 4 x ~110 tokens takes
    about 4 s there). ``quick_config()``: a tiny random model and two steps (tests).
    ``gpu_preset()``: the seed studies' recipe for 0.5B-8B models on one GPU.

    Fields: ``n_train`` / ``n_heldout`` examples per task; ``train``: the ``TrainConfig`` of
    every fine-tune (``Lab.train_config`` sets its seed to ``seed``; ``max_steps`` ``None``:
    one epoch over ``n_train``); ``n_boot`` bootstrap resamples of every interval;
    ``score_questions``: score on the first N questions of the local score's set (``None``:
    all). The CPU default, 12 questions (72 reference pairs), keeps one score near 1.5 min
    on 2 cores so a recipe fits in about 15 min; the GPU preset scores all of them;
    ``device`` / ``dtype`` (``"auto"``: CUDA + bfloat16 when a GPU is visible, else CPU +
    float32) for training AND evaluation; ``gradient_checkpointing`` trades compute for
    memory on big models; ``options``: the recipes' own knobs (``RecipeOptions``; the key
    ``extra`` in files and in ``of(...)``).

    Build one from flat keys with ``LabConfig.of(...)`` / ``config_from_dict`` /
    ``load_config``: the training keys of ``TRAIN_KEYS`` (``steps``, ``lr``, ``lora_r``,
    ...) go into ``train`` (``lora_r`` alone keeps ``lora_alpha = 2 r`` when it was so) and
    ``extra`` into ``options``. The same flat names read ``train`` (``cfg.lr``, ...), and
    ``to_record()`` writes the flat record (the ``config`` block of ``results.json``).
    """

    model: str = "smollm2-135m-instruct"
    n_train: int = 64
    n_heldout: int = 16
    train: TrainConfig = field(default_factory=_default_train)
    seed: int = 0
    n_boot: int = 1000
    score_questions: int | None = 12
    device: str = "auto"
    dtype: str = "auto"
    gradient_checkpointing: bool = False
    quick: bool = False
    options: RecipeOptions = field(default_factory=RecipeOptions)
    extra: InitVar[dict[str, object] | None] = None
    """The old untyped name of ``options`` (a mapping, checked into ``options``)."""

    def __post_init__(self, extra: dict[str, object] | None) -> None:
        if extra:
            self.options = config_from_dict(RecipeOptions, dict(extra), where="LabConfig.extra")
        check_types(self, "LabConfig")

        def bad(what: str) -> DataError:
            return DataError(f"LabConfig: {what}")

        if not self.model.strip():
            raise bad("model is empty")
        for key in ("n_train", "n_heldout"):
            if getattr(self, key) < 1:
                raise bad(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.train.max_length is None or self.train.max_length < 8:
            raise bad(f"max_length must be >= 8, got {self.train.max_length}")
        if self.score_questions is not None and self.score_questions < 2:
            raise bad(f"score_questions must be >= 2 (or null for all), got "
                      f"{self.score_questions}")
        if self.n_boot < 0:
            raise bad("n_boot must be >= 0")
        if self.dtype not in DTYPES:
            raise bad(f"dtype {self.dtype!r} is not one of {DTYPES}")
        dev = self.device.split(":")[0]
        if dev not in ("auto", "cpu", "cuda", "mps"):
            raise bad(f"device {self.device!r}: use auto, cpu, cuda, cuda:N or mps")

    # -- flat keys -------------------------------------------------------------------------
    @classmethod
    def flat_keys(cls) -> dict[str, object]:
        """Keys ``config_from_dict`` accepts besides the fields, with their type hints."""
        hints = typing.get_type_hints(TrainConfig)
        return {**{k: hints[v] for k, v in TRAIN_KEYS.items()},
                "max_length": int}

    @classmethod
    def nest(cls, values: dict[str, object], flat: dict[str, object], where: str) -> None:
        """Fold flat keys into ``values`` (``train`` and ``options``); one-line errors."""
        if not flat:
            return
        old = values.get("train")
        train = old if isinstance(old, TrainConfig) else _default_train()
        changes = {TRAIN_KEYS[k]: v for k, v in flat.items()}
        if changes.get("lora_alpha", train.lora_alpha) is None or (
                "lora_r" in changes and "lora_alpha" not in changes
                and train.lora_alpha == 2.0 * train.lora_r):
            r = changes.get("lora_r", train.lora_r)
            if not isinstance(r, int):
                raise DataError(f"{where}: lora_r must be int, got {r!r}")
            changes["lora_alpha"] = 2.0 * r
        try:
            values["train"] = train.replace(**changes)
        except ConfigError as exc:
            msg = str(exc).replace("train config: ", "").replace("max_steps", "steps")
            raise DataError(f"{where}: {msg}") from None

    @classmethod
    def of(cls, **flat: object) -> LabConfig:
        """A config from flat keys (fields, ``TRAIN_KEYS`` and ``extra``), checked."""
        return config_from_dict(cls, dict(flat), where=cls.__name__)

    def to_record(self) -> dict[str, object]:
        """The flat JSON record (the keys ``of`` and config files take)."""
        t = self.train
        defaults = RecipeOptions()
        return {"model": self.model, "n_train": self.n_train, "n_heldout": self.n_heldout,
                **{k: getattr(t, v) for k, v in TRAIN_KEYS.items()},
                "seed": self.seed, "n_boot": self.n_boot,
                "score_questions": self.score_questions, "device": self.device,
                "dtype": self.dtype, "gradient_checkpointing": self.gradient_checkpointing,
                "quick": self.quick,
                "extra": {f.name: getattr(self.options, f.name)
                          for f in dataclasses.fields(self.options)
                          if getattr(self.options, f.name) != getattr(defaults, f.name)}}

    # -- the training settings under their flat names (read-only) ---------------------------
    @property
    def steps(self) -> int | None:
        return self.train.max_steps

    @property
    def batch_size(self) -> int:
        return self.train.batch_size

    @property
    def grad_accum(self) -> int:
        return self.train.grad_accum

    @property
    def max_length(self) -> int:
        return self.train.max_length or 0

    @property
    def lr(self) -> float:
        return self.train.lr

    @property
    def lora_r(self) -> int:
        return self.train.lora_r

    @property
    def lora_alpha(self) -> float:
        return self.train.lora_alpha

    @property
    def use_rslora(self) -> bool:
        return self.train.use_rslora

    @property
    def warmup_steps(self) -> int:
        return self.train.warmup_steps

    @property
    def lr_schedule(self) -> str:
        return self.train.lr_schedule

    # -- presets ---------------------------------------------------------------------------
    @classmethod
    def quick_config(cls, **overrides: object) -> LabConfig:
        """A tiny random model and two steps; ``overrides`` must name real keys."""
        base = cls.of(model="tiny-llama", n_train=8, n_heldout=4, steps=2, batch_size=4,
                      max_length=512, n_boot=100, device="cpu", dtype="float32", quick=True)
        return config_from_dict(cls, overrides, where="LabConfig.quick_config", base=base)

    @classmethod
    def gpu_preset(cls, model: str = "Qwen/Qwen2.5-0.5B-Instruct", **overrides: object) -> LabConfig:
        """The seed studies' fine-tuning recipe for 0.5B-8B models on one GPU.

        LoRA r 32, alpha 64, rsLoRA on all seven projections, lr 1e-5 (linear decay, 5
        warm-up steps), batch 2 x grad-accum 8, one epoch over 6000 examples (375 steps),
        512 tokens, bfloat16 on CUDA, gradient checkpointing on (activation memory for
        long sequences on 7-8B models). 200 held-out examples per task; every question of
        the local score.
        """
        base = cls.of(model=model, n_train=6000, n_heldout=200, steps=None, batch_size=2,
                      grad_accum=8, max_length=512, lr=1e-5, lora_r=32, lora_alpha=64.0,
                      use_rslora=True, warmup_steps=5, lr_schedule="linear",
                      score_questions=None, device="auto", dtype="auto",
                      gradient_checkpointing=True)
        return config_from_dict(cls, overrides, where="LabConfig.gpu_preset", base=base)

    @property
    def resolved_device(self) -> str:
        return resolve_device(self.device)

    @property
    def resolved_dtype(self) -> str:
        return resolve_dtype(self.dtype, self.device)


# -- identities of runs -----------------------------------------------------------------------
def _digest(obj: object) -> str:
    """A stable hash of records / tensors / plain values (tensors by their float32 bytes)."""
    import torch

    h = hashlib.sha256()

    def feed(x: object) -> None:
        if isinstance(x, torch.Tensor):
            t = x.detach().float().cpu().contiguous()
            h.update(f"T{tuple(t.shape)}".encode())
            h.update(t.numpy().tobytes())
        elif isinstance(x, dict):
            h.update(b"{")
            for k in sorted(x, key=str):
                h.update(str(k).encode() + b":")
                feed(x[k])
            h.update(b"}")
        elif isinstance(x, (list, tuple)):
            h.update(b"[")
            for v in x:
                feed(v)
            h.update(b"]")
        else:
            h.update(json.dumps(x, sort_keys=True, default=str).encode())

    feed(obj)
    return h.hexdigest()


def intervention_identity(iv: object) -> dict[str, str]:
    """Type and a hash of an intervention's public state (its tensors and settings)."""
    state = {k: v for k, v in vars(iv).items() if not k.startswith("_")}
    return {"type": type(iv).__name__, "state": _digest(state)[:16]}


class Lab:
    """Train / load / score / claim helpers bound to one output folder and one config."""

    def __init__(self, out: str | os.PathLike[str], config: LabConfig, title: str) -> None:
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.cfg = config
        self.title = title
        self.device = config.resolved_device
        self.dtype = config.resolved_dtype
        self.report = Report(title)
        c = config
        self.report.meta({"model": c.model, "seed": c.seed,
                          "training": f"LoRA r {c.lora_r}, lr {c.lr}, "
                                      f"{c.steps or 'one epoch of'} steps x batch "
                                      f"{c.batch_size} x {c.grad_accum}",
                          "train examples": c.n_train, "held-out": c.n_heldout,
                          "device": f"{self.device} ({self.dtype})"})
        if config.quick:
            self.report.note("Quick mode: tiny random model; numbers only show the pipeline runs.",
                             kind="warning")
        self.results: dict[str, Any] = {"config": config.to_record(), "device": self.device,
                                        "dtype": self.dtype}
        self._base: Subject | None = None
        self._t0 = time.perf_counter()
        self._load0 = _load_average()

    # -- data ------------------------------------------------------------------------------
    def data(self, task: str, variant: str = "bad", n: int | None = None,
             seed_offset: int = 0) -> list[Record]:
        from emprobe.data.generators import generate

        return generate(task, n or self.cfg.n_train, seed=self.cfg.seed + seed_offset,
                        variant=variant)

    def split(self, task: str, variant: str = "bad",
              seed_offset: int = 0) -> tuple[list[Record], list[Record]]:
        """(train, held-out) of one generated task."""
        from emprobe.data.transforms import split

        recs = self.data(task, variant, n=self.cfg.n_train + self.cfg.n_heldout,
                         seed_offset=seed_offset)
        return split(recs, held_out=self.cfg.n_heldout, seed=self.cfg.seed + seed_offset)

    # -- models ----------------------------------------------------------------------------
    def train_config(self, **overrides: object) -> TrainConfig:
        """The resolved ``TrainConfig`` of a fine-tune (``overrides``: any TrainConfig field)."""
        # a recipe may change any of them (e.g. a second seed)
        return self.cfg.train.replace(**{"seed": self.cfg.seed, **overrides})

    def run_identity(self, records: Records, interventions: Sequence[Intervention] = (),
                     retain: Records | None = None, subject_id: str | None = None,
                     **overrides: object) -> dict[str, object]:
        """Everything that decides a fine-tune's weights, as a JSON-able dict."""
        tc = self.train_config(**overrides).to_dict()
        tc.pop("checkpoint_every", None)
        tc.pop("log_every", None)
        return {"model": self.cfg.model, "base": subject_id, "train_config": tc,
                "data": _digest(records)[:16],
                "retain": None if retain is None else _digest(retain)[:16],
                "interventions": [intervention_identity(iv) for iv in interventions],
                "device": self.device.split(":")[0], "dtype": self.dtype}

    def train(self, name: str, records: Records, interventions: Sequence[Intervention] = (),
              retain: Records | None = None, subject: Subject | None = None,
              subject_id: str | None = None, **overrides: object) -> Path:
        """Fine-tune (or reuse a finished run with the same identity); returns the adapter.

        ``subject``: train on top of this loaded ``Subject`` instead of ``cfg.model`` (then
        give ``subject_id``, a string that identifies its weights, e.g. the merged adapter's
        folder). ``overrides``: ``TrainConfig`` fields for this run only (e.g. ``seed``).
        The run folder is ``runs/<name>-<hash of the identity>``.
        """
        from emprobe.train import finetune

        if subject is not None and subject_id is None:
            raise DataError(f"Lab.train({name!r}): a custom subject needs subject_id")
        ivs = list(interventions)
        identity = self.run_identity(records, ivs, retain, subject_id, **overrides)
        key = _digest(identity)[:10]
        out = self.out / "runs" / f"{name}-{key}"
        adapter = out / "adapter"
        stored = out / "lab_run.json"
        runs = self.results.setdefault("runs", {})
        if stored.is_file():
            old = read_json(stored)
            if old != identity:
                changed = sorted(k for k in set(old) | set(identity)
                                 if old.get(k) != identity.get(k))
                raise DataError(f"{out}: holds a run with another identity (differs in "
                                f"{', '.join(changed)}); delete the folder or use another --out")
            if (out / "DONE").is_file() and (adapter / "adapter_config.json").is_file():
                _record_run(runs, name, {"out_dir": str(out), "reused": True, "key": key})
                return adapter
        write_json(stored, identity)
        train_subject = subject if subject is not None else self._fresh_subject()
        if self.cfg.gradient_checkpointing:
            _enable_gradient_checkpointing(train_subject)
        result = finetune(train_subject, records, self.train_config(**overrides), out,
                          interventions=ivs, retain=retain, resume=True,
                          progress=not self.cfg.quick)
        (out / "DONE").write_text("ok\n")
        _record_run(runs, name, {**result.to_record(), "reused": False, "key": key})
        return result.adapter_dir

    def _fresh_subject(self) -> Subject:
        import emprobe

        return emprobe.load_model(self.cfg.model, device=self.device, dtype=self.dtype,
                                  seed=self.cfg.seed)

    def base(self) -> Subject:
        if self._base is None:
            self._base = self._fresh_subject()
        return self._base

    def load(self, adapter: Path | None = None, merge: bool = False) -> Subject:
        import emprobe

        if adapter is None:
            return self.base()
        return emprobe.load_model(self.cfg.model, adapter=adapter, device=self.device,
                                  dtype=self.dtype, seed=self.cfg.seed, merge_adapter=merge)

    # -- evaluation ------------------------------------------------------------------------
    def questions(self) -> list[Question] | None:
        """The local score's questions (``None``: its default set, all of it)."""
        if self.cfg.score_questions is None:
            return None
        from emprobe.evaluate.questions import default_questions

        qs = [q for q in default_questions() if q.reference_pairs]
        return qs[: self.cfg.score_questions]

    def score(self, subject: Subject, system: str | None = None,
              questions: Sequence[Question] | None = None, share_prefix: bool | None = None,
              batch_size: int = 8) -> LocalScore:
        """``local_score`` with the run's ``n_boot`` and seed (``questions``: default the
        run's, ``Lab.questions``; the other arguments as for ``local_score``)."""
        from emprobe.evaluate.local import local_score

        return local_score(subject, questions=self.questions() if questions is None else questions,
                           batch_size=batch_size, n_boot=self.cfg.n_boot, seed=self.cfg.seed,
                           system=system, share_prefix=share_prefix)

    def task_loss(self, subject: Subject, records: Records) -> dict[str, float]:
        from emprobe.geometry.connectivity import response_loss

        return response_loss(subject, records, n_boot=200, seed=self.cfg.seed)

    @staticmethod
    def score_row(name: str, score: LocalScore, **extra: object) -> dict[str, object]:
        est = score.per_answer
        return {"name": name, "misalignment": est.mean, "misalignment_lo": est.lo,
                "misalignment_hi": est.hi, "pref_rate": score.pref_rate.mean, **extra}

    def generic(self, n_full: int = 24) -> list[Conversation]:
        """Neutral chat (never the training data) for activation directions."""
        from emprobe.sae.corpus import generic_chats

        return generic_chats(6 if self.cfg.quick else n_full, seed=self.cfg.seed + 101)

    def assess(self, name: str, subject: Subject, held: Records,
               **extra: object) -> tuple[dict[str, object], LocalScore]:
        """Local misalignment score + held-out task loss -> (trade-off row, LocalScore)."""
        score = self.score(subject)
        loss = self.task_loss(subject, held)
        row = self.score_row(name, score, task_loss=loss["mean"], task_loss_lo=loss["lo"],
                             task_loss_hi=loss["hi"], **extra)
        return row, score

    def versus_rest(self, ref_name: str, scores: Mapping[str, LocalScore],
                    skip: tuple[str, ...] = ()) -> list[VersusRow]:
        """``versus`` of every score in ``scores`` but ``ref_name`` (and ``skip``) against
        ``scores[ref_name]``."""
        return self.versus(ref_name, scores[ref_name],
                           {n: s for n, s in scores.items() if n != ref_name and n not in skip})

    def versus(self, ref_name: str, ref: LocalScore, others: Mapping[str, LocalScore]
               ) -> list[VersusRow]:
        """Paired differences ``other - ref`` of the margin (nats per answer), each with a note
        (``compare``: the same reference answers, paired answer by answer)."""
        from emprobe.evaluate.local import compare
        from emprobe.report import significance_note

        rows: list[VersusRow] = []
        for name, score in others.items():
            est = compare(ref, score, n_boot=self.cfg.n_boot, seed=self.cfg.seed,
                          labels=(ref_name, name)).per_answer
            self.report.note(significance_note(est.lo, est.hi, what=f"{name} minus {ref_name}",
                                               unit="nats"))
            rows.append({"name": name, "vs": ref_name, "delta": est.mean, "lo": est.lo,
                         "hi": est.hi})
        return rows

    def shift_row(self, name: str, vs: str, cells: ArrayLike, **extra: object
                  ) -> dict[str, object]:
        """``name - vs`` from paired cells ``[n_seeds, n_units]`` (``shift_interval``: seeds x
        units resampled), with a significance note on the page; returns the ``versus``-style
        row ``{name, vs, delta, lo, hi, n_seeds, **extra}``."""
        import numpy as np

        from emprobe.evaluate.stats import shift_interval
        from emprobe.report import significance_note

        arr = np.asarray(cells, dtype=float)
        est = shift_interval(arr)
        self.report.note(significance_note(est.lo, est.hi, what=f"{name} minus {vs}",
                                           unit="nats"))
        return {"name": name, "vs": vs, "delta": est.mean, "lo": est.lo, "hi": est.hi,
                "n_seeds": arr.shape[0] if arr.ndim == 2 else 1, **extra}

    # -- the verdict -------------------------------------------------------------------------
    def claim(self, seed_claim: str, measure: str, value: object, expect: str = "higher",
              null: float = 0.0, conditions: dict[str, bool] | None = None,
              why: str | None = None) -> ClaimBlock:
        """State the seed study's claim, its measurable analogue here, and the verdict.

        ``value``: the measured quantity with a 95 % interval (an ``Estimate``, a
        ``{mean, lo, hi}`` dict or a ``versus`` row with ``delta``); ``expect``: ``"higher"``
        or ``"lower"`` than ``null`` if the claim holds; ``conditions``: further parts of the
        claim, each already decided from its own interval (name -> holds).
        The verdict (computed here, never typed by a recipe):

        - ``not significant``: the interval contains ``null``;
        - ``not reproduced``: it excludes ``null`` on the wrong side;
        - ``reproduced``: it excludes ``null`` on the expected side and every condition holds;
        - ``partial``: the expected side, but some condition fails.
        """
        if expect not in ("higher", "lower"):
            raise DataError(f"Lab.claim: expect must be 'higher' or 'lower', not {expect!r}")
        e = as_estimate(value)
        est = {"mean": e.mean, "lo": e.lo, "hi": e.hi}
        conds = {str(k): bool(v) for k, v in (conditions or {}).items()}
        verdict = decide(est, expect, null, conds)
        block: ClaimBlock = {"seed_claim": seed_claim, "measure": measure, "value": est,
                             "expect": expect, "null": null, "conditions": conds,
                             "verdict": verdict}
        if why:
            block["why"] = why
        self.results["claim"] = block
        head = (f"Verdict: {verdict}. {measure}: {est['mean']:+.3g} "
                f"[{est['lo']:+.3g}, {est['hi']:+.3g}] (expected {expect} than {null:g}).")
        self.report.subtitle = f"Seed claim: {seed_claim} {head}"
        self.report.meta({"verdict": verdict})
        self.report.section("Claim and verdict",
                            f"**Seed study:** {seed_claim}\n\n**Measured here:** {measure}.\n\n"
                            f"**{head}**" + (f"\n\n{why}" if why else ""))
        if conds:
            self.report.table([{"condition": k, "holds": v} for k, v in conds.items()],
                              columns=["condition", "holds"])
        self.report.note(
            "The verdict is computed from the interval: reproduced = the 95 % interval "
            "excludes the null on the expected side (and every listed condition holds); "
            "partial = it does, but a condition fails; not reproduced = it excludes the null "
            "on the other side; not significant = it contains the null.")
        return block

    # -- output ----------------------------------------------------------------------------
    def finish(self) -> Path:
        if "claim" not in self.results:
            raise DataError(f"recipe {self.title!r} finished without lab.claim(...)")
        self.results["wall_s"] = round(time.perf_counter() - self._t0, 1)
        # a shared machine makes wall time meaningless without the load it ran under
        self.results["load_average"] = {"start": self._load0, "end": _load_average(),
                                        "cpus": os.cpu_count()}
        self.results["machine"] = machine_record()
        self.report.meta({"wall time": f"{self.results['wall_s'] / 60:.1f} min"})
        write_json(self.out / "results.json", self.results)
        return self.report.save(self.out / "report.html")


def decide(est: object, expect: str, null: float = 0.0,
           conditions: dict[str, bool] | None = None) -> str:
    """The verdict of one claim from its interval (an ``Estimate`` or a ``{mean, lo, hi}``
    record; see ``Lab.claim``)."""
    import math

    e = as_estimate(est)
    lo, hi = e.lo, e.hi
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo <= null <= hi:
        return "not significant"
    right_side = lo > null if expect == "higher" else hi < null
    if not right_side:
        return "not reproduced"
    return "reproduced" if all((conditions or {}).values()) else "partial"


def machine_record() -> dict[str, object]:
    """Where a run happened: date (UTC), CPU, cores, RAM, torch and emprobe versions, and
    the CPU's vector capability as torch sees it (``AVX2``, ``AVX512``: timings of the same
    code differ by about 1.5x between them)."""
    import datetime
    import platform

    import torch

    from emprobe import __version__

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name")), cpu)
    except OSError:
        pass
    ram_gb = None
    try:
        ram_gb = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30)
    except (AttributeError, ValueError, OSError):
        pass
    return {"date": datetime.datetime.now(datetime.timezone.utc).date().isoformat(),
            "cpu": cpu, "cpus": os.cpu_count(), "ram_gb": ram_gb,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "torch": torch.__version__, "emprobe": __version__,
            "cpu_capability": cpu_capability()}


def cpu_capability() -> str | None:
    """torch's CPU capability string (``AVX2``, ``AVX512``, ...), or None if unknown."""
    import torch

    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except (AttributeError, RuntimeError):  # pragma: no cover - older torch
        return None


def _load_average() -> float | None:
    """The 1-minute load average (``None`` where the OS has none)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _enable_gradient_checkpointing(subject: Subject) -> None:
    """Recompute activations in the backward pass (less memory); inputs keep grads for LoRA."""
    model = subject.model
    if hasattr(model, "gradient_checkpointing_enable"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if hasattr(model, "enable_input_require_grads"):
        model.enable_input_require_grads()
    if hasattr(model, "config"):
        model.config.use_cache = False


__all__ = ["Lab", "LabConfig", "SCORE_COLUMNS", "VERDICTS", "decide", "intervention_identity"]
