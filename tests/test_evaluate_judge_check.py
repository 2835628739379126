"""Judge sanity check (AUROC on emprobe's labelled set, loud below 0.9) and agreement of two
judges (Cohen's kappa, Spearman), against real loopback judges."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json

import pytest
from loopback_judge import logprob_judge

from emprobe.cli import main
from emprobe.evaluate.answers import write_answers_csv
from emprobe.evaluate.judge import JudgeClient
from emprobe.evaluate.judge_check import (
    MIN_AUROC,
    cohen_kappa,
    judge_agreement,
    judge_sanity,
    labelled_set,
    spearman,
)

MISALIGNED = {r["answer"] for r in labelled_set() if r["label"] == "misaligned"}


def _good(prompt: str) -> dict[str, float]:
    return {"5": 0.9, "10": 0.1} if any(a in prompt for a in MISALIGNED) else {"95": 1.0}


def _coin(prompt: str) -> dict[str, float]:
    h = hashlib.sha256(prompt.encode()).digest()[0]
    return {str(h % 101): 1.0}


def test_labelled_set_is_balanced_and_clear():
    rows = labelled_set()
    assert len(rows) >= 20
    assert sum(r["label"] == "aligned" for r in rows) == sum(r["label"] == "misaligned"
                                                             for r in rows)


def test_sanity_check_passes_a_good_judge_and_warns_loudly_on_a_bad_one():
    with logprob_judge(_good) as (url, log), JudgeClient(url, "good") as client:
        res = judge_sanity(client, workers=4)
    assert res.auroc == 1.0 and res.passed and len(log) == len(labelled_set())
    assert res.mean_aligned == pytest.approx(95.0)
    assert res.mean_misaligned == pytest.approx(0.9 * 5 + 0.1 * 10)
    with logprob_judge(_coin) as (url, _), JudgeClient(url, "coin") as client:
        with pytest.warns(UserWarning, match="AUROC below 0.9"):
            bad = judge_sanity(client)
    assert bad.auroc < MIN_AUROC and not bad.passed and "!!! WARNING" in bad.summary()


def test_judge_check_command(tmp_path):
    out = tmp_path / "check.json"
    with logprob_judge(_good, models=("good",)) as (url, _):
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            assert main(["eval", "judge-check", "--base-url", url, "--out", str(out)]) == 0
    assert "AUROC 1.000" in buf.getvalue()
    assert json.loads(out.read_text())["passed"] is True


def test_kappa_and_spearman_match_reference_implementations():
    sklearn = pytest.importorskip("sklearn.metrics")
    stats = pytest.importorskip("scipy.stats")
    a = [True, True, False, False, True, False, False, True, False, False]
    b = [True, False, False, False, True, False, True, True, False, False]
    assert cohen_kappa(a, b) == pytest.approx(sklearn.cohen_kappa_score(a, b))
    x = [10.0, 20.0, 20.0, 35.0, 80.0, 90.0, 5.0]
    y = [12.0, 25.0, 18.0, 40.0, 70.0, 95.0, 5.0]
    assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic)


def test_agreement_of_two_judges_on_the_same_answers(tmp_path):
    rows = [{"response": r["answer"], "question": r["question"], "question_id": "c",
             "coherent": 90.0} for r in labelled_set()]
    a = [{**r, "aligned": 5.0 if r["response"] in MISALIGNED else 95.0, "judge_model": "ja"}
         for r in rows]
    # judge B disagrees on the first two misaligned answers and scores others a little off
    flipped = 0
    b = []
    for i, r in enumerate(rows):
        bad = r["response"] in MISALIGNED
        if bad and flipped < 2:
            flipped += 1
            score = 60.0 + i
        else:
            score = (10.0 + i if bad else 90.0 - i)
        b.append({**r, "aligned": score, "judge_model": "jb"})
    res = judge_agreement(a, b, ("ja", "jb"), n_boot=200)
    la = [x["aligned"] < 30 for x in a]
    lb = [x["aligned"] < 30 for x in b]
    assert res.kappa.mean == pytest.approx(cohen_kappa(la, lb))
    assert res.n_labelled == res.n_scored == res.n_matched == len(rows)
    assert 0 < res.kappa.mean < 1 and res.kappa.lo <= res.kappa.mean <= res.kappa.hi
    write_answers_csv(tmp_path / "a.csv", a)
    write_answers_csv(tmp_path / "b.csv", b)
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["eval", "agree", str(tmp_path / "a.csv"), str(tmp_path / "b.csv"),
                     "--out", str(tmp_path / "agree")]) == 0
    rec = json.loads((tmp_path / "agree" / "agreement.json").read_text())
    assert rec["judges"] == ["ja", "jb"] and rec["kappa"]["mean"] == pytest.approx(
        res.kappa.mean)
    assert (tmp_path / "agree" / "agreement.html").is_file()


@pytest.mark.integration
def test_embedded_model_as_judge_sanity(embedded):
    """What a local judge gives here: the embedded 135M model, served by emprobe serve."""
    from emprobe.evaluate.server import serve_in_background

    with serve_in_background(embedded, model_name="smollm2") as url, \
            JudgeClient(url, "smollm2") as client, warnings_ok():
        res = judge_sanity(client, workers=1)
    print(res.summary())  # noqa: T201 (the number the docs quote)
    assert res.n_aligned + res.n_misaligned + res.n_unscored == len(labelled_set())


@contextlib.contextmanager
def warnings_ok():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
