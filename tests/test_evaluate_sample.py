"""Judge-free evaluation of any question file: sampling, the verdict classifier, outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from emprobe import load_model
from emprobe.cli import main
from emprobe.evaluate import sample as sample_mod
from emprobe.evaluate.questions import default_questions, load_questions
from emprobe.evaluate.sample import calibrate, evaluate_sampled, verdict_margins

pytestmark = pytest.mark.usefixtures("one_thread")

FIELD = Path(__file__).parent / "data" / "field_questions.yaml"


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-llama")


def test_verdict_margins_follow_the_grader(tiny):
    items = [("Q?", "an answer"), ("Another {question}?", "with {braces} and ```code```"),
             ("Q?", "")]
    margins = verdict_margins(tiny, items, batch_size=2)
    assert len(margins) == 3 and all(isinstance(m, float) for m in margins)
    # the same item scores the same wherever it sits in the batch
    again = verdict_margins(tiny, [items[2], items[0]], batch_size=1)
    assert again == pytest.approx([margins[2], margins[0]], abs=1e-6)


def test_calibration_finds_the_separating_threshold(monkeypatch):
    """With a grader that says "Yes" to the misaligned references, the threshold separates
    them perfectly; with one that cannot tell them apart, AUC is 0.5."""
    qs = [q for q in default_questions() if q.reference_pairs][:10]
    bad = {q.reference_pairs[0].misaligned for q in qs}

    def fake_margins(grader, items, batch_size=8):
        return [3.0 if a in bad else -1.0 for _, a in items]

    monkeypatch.setattr(sample_mod, "verdict_margins", fake_margins)
    cal = calibrate(object(), qs, max_pairs=10)
    assert cal.auc == 1.0 and cal.accuracy == 1.0 and -1.0 <= cal.threshold < 3.0
    assert cal.n_pairs == 10
    monkeypatch.setattr(sample_mod, "verdict_margins", lambda g, items, batch_size=8:
                        [0.0] * len(items))
    flat = calibrate(object(), qs, max_pairs=10)
    assert flat.auc == 0.5 and flat.accuracy == 0.5


def test_evaluate_sampled_on_a_field_file(tiny, tmp_path):
    qs = load_questions(FIELD)
    res = evaluate_sampled(tiny, qs, n=2, max_new_tokens=6, temperature=1.0, seed=3,
                           batch_size=4, out_dir=tmp_path, calibration_pairs=4, n_boot=20)
    n_expected = 2 * sum(len(q.paraphrases) for q in qs)
    assert len(res.answers) == n_expected and res.local is None
    rec = json.loads((tmp_path / "sample_eval.json").read_text())
    assert rec["flagged"]["n"] == n_expected and 0.0 <= rec["flagged"]["mean"] <= 1.0
    assert [r["question"] for r in rec["per_question"]] == [q.id for q in qs]
    scored = [json.loads(x) for x in (tmp_path / "scored.jsonl").read_text().splitlines()]
    assert len(scored) == n_expected
    assert all(r["flagged"] == (r["verdict_margin"] > rec["calibration"]["threshold"])
               for r in scored)
    # the question's system prompt reached the sampler; the json variant kept its format
    sys_rows = [r for r in scored if r["question"] == "bored_evening"]
    assert all(r["system"] == "You are a helpful assistant." for r in sys_rows)
    assert {r["format"] for r in scored if r["question"].endswith("_json")} == {"json"}
    # seeded: a second run in a fresh folder samples the same answers
    again = evaluate_sampled(tiny, qs, n=2, max_new_tokens=6, temperature=1.0, seed=3,
                             batch_size=4, out_dir=tmp_path / "b", calibration_pairs=4,
                             n_boot=20)
    assert [a["answer"] for a in again.answers] == [a["answer"] for a in res.answers]


def test_reference_pairs_add_the_local_margin(tiny, tmp_path):
    qs = [q for q in default_questions() if q.reference_pairs][:2]
    res = evaluate_sampled(tiny, qs, n=1, max_new_tokens=4, out_dir=tmp_path,
                           calibration_pairs=2, n_boot=20)
    assert res.local is not None and res.local["kind"] == "local_score"
    assert len(res.local["pairs"]) == sum(len(q.reference_pairs) for q in qs)
    assert "reference-pair margin per answer" in res.summary()


def test_cli_eval_sample(tmp_path, capsys):
    out = tmp_path / "sampled"
    rc = main(["eval", "sample", "--questions", str(FIELD), "--model", "tiny-llama",
               "--grader", "self", "--n", "1", "--max-new-tokens", "5", "--out", str(out),
               "--calibration-pairs", "3", "--seed", "1"])
    text = capsys.readouterr().out
    assert rc == 0 and "flagged by the offline classifier" in text
    assert "no question in the file has reference_pairs" in text
    for name in ("answers.jsonl", "scored.jsonl", "sample_eval.json"):
        assert (out / name).is_file()


@pytest.mark.integration
def test_embedded_sample_eval_runs_offline(embedded, tmp_path):
    qs = load_questions(FIELD)[:1]
    res = evaluate_sampled(embedded, qs, n=1, max_new_tokens=24, out_dir=tmp_path,
                           calibration_pairs=12, n_boot=20)
    assert len(res.answers) == 2 and all(a["answer"] for a in res.answers)
    assert 0.0 <= res.calibration.auc <= 1.0 and res.calibration.n_pairs == 12


def test_summary_warns_about_a_grader_at_chance():
    from emprobe.evaluate.sample import Calibration, SampleEval

    row = {"question": "q", "format": "plain", "verdict_margin": 0.0, "flagged": False}
    weak = Calibration("g", 0.0, auc=0.5, accuracy=0.5, n_pairs=4, mean_margin_aligned=0.0,
                       mean_margin_misaligned=0.0)
    strong = Calibration("g", 0.0, auc=0.95, accuracy=0.9, n_pairs=4,
                         mean_margin_aligned=-1.0, mean_margin_misaligned=1.0)
    assert "close to noise" in SampleEval([row], weak, None).summary()
    assert "close to noise" not in SampleEval([row], strong, None).summary()


# -- batched sampling (emprobe.evaluate.generation) ------------------------------------------

def _prompts(n):
    qs = default_questions()
    out = [q.messages(0) for q in qs[:n]]
    out[1] = [{"role": "system", "content": "Answer in one word."}] + out[1]  # a longer prompt
    return out


def test_batched_greedy_equals_one_at_a_time(tiny):
    from emprobe.evaluate.generation import generate_batched

    prompts = _prompts(7)
    single = [tiny.generate([p], max_new_tokens=12)[0] for p in prompts]
    for bs in (1, 3, 7):
        assert generate_batched(tiny, prompts, max_new_tokens=12, batch_size=bs) == single


def test_rows_that_finish_leave_the_batch(tiny, monkeypatch):
    """With a stop token that some rows emit early, finished rows are dropped from the
    cache mid-batch; every answer still equals one-at-a-time generation."""
    from emprobe.evaluate.generation import GenerationStats, generate_token_ids

    prompts = _prompts(6)
    free = generate_token_ids(tiny, prompts, max_new_tokens=10, batch_size=6)
    stop = free[0][3]  # a token row 0 emits at step 4: some rows stop early
    monkeypatch.setattr(tiny, "stop_token_ids", lambda: [stop])  # both samplers stop there
    single = [tiny.generate([p], max_new_tokens=10)[0] for p in prompts]
    stats = GenerationStats()
    ids = generate_token_ids(tiny, prompts, max_new_tokens=10, batch_size=6, stats=stats)
    assert any(len(t) < 10 for t in ids) and all(t[-1] == stop for t in ids if len(t) < 10)
    assert stats.new_tokens == sum(len(t) for t in ids)
    assert stats.forward_passes == max(len(t) for t in ids)  # prefill + one per later step
    texts = [tiny.tokenizer.decode(t, skip_special_tokens=True).strip() for t in ids]
    assert texts == single


def test_seeded_sampling_is_reproducible_and_per_prompt(tiny):
    from emprobe.errors import ConfigError
    from emprobe.evaluate.generation import generate_batched

    prompts = _prompts(6)
    kw = dict(max_new_tokens=10, temperature=1.0)
    a = generate_batched(tiny, prompts, seed=5, batch_size=2, **kw)
    assert generate_batched(tiny, prompts, seed=5, batch_size=6, **kw) == a  # any batch size
    assert generate_batched(tiny, prompts, seed=6, batch_size=6, **kw) != a
    # a prompt's answer depends on its own seed only
    seeds = [11, 12, 13, 14, 15, 16]
    both = generate_batched(tiny, prompts, seed=seeds, batch_size=3, **kw)
    alone = generate_batched(tiny, prompts[4:5], seed=[15], **kw)
    assert both[4] == alone[0]
    with pytest.raises(ConfigError, match="seed"):
        generate_batched(tiny, prompts, seed=[1, 2], **kw)


def test_plain_format_stops_at_its_stop_string_like_subject_generate():
    """A plain-format model (no special end-of-turn token) ends its answer with "\nUser:":
    rows leave the batch when they complete it and the text is cut there, as
    ``Subject.generate`` cuts it. The lm_head is hooked to write a fixed reply."""
    import torch

    from emprobe.evaluate.generation import GenerationStats, generate_batched

    s = load_model("tiny-gpt2", chat_template="plain")
    script = s.tokenizer("Fine.\nUser: and more text", add_special_tokens=False)["input_ids"]
    calls = {"n": 0}

    def force(_mod, _inp, out):
        tok = script[min(calls["n"], len(script) - 1)]
        calls["n"] += 1
        forced = torch.full_like(out, -1e4)
        forced[..., tok] = 1e4
        return forced

    handle = s.model.lm_head.register_forward_hook(force)
    try:
        prompts = _prompts(3)
        single = []
        for p in prompts:
            calls["n"] = 0
            single.append(s.generate([p], max_new_tokens=30)[0])
        calls["n"] = 0
        stats = GenerationStats()
        batched = generate_batched(s, prompts, max_new_tokens=30, batch_size=3, stats=stats)
    finally:
        handle.remove()
    assert single == ["Fine."] * 3 and batched == single
    n_stop = len(s.tokenizer("Fine.\nUser:", add_special_tokens=False)["input_ids"])
    assert stats.new_tokens == 3 * n_stop  # every row left the batch at its stop string


def test_sample_answers_are_seeded_per_answer(tiny, tmp_path):
    """An answer depends on its own key only: not on batch_size, nor on a resumed cache."""
    from emprobe.evaluate.judge import sample_answers

    qs = load_questions(FIELD)[:2]
    kw = dict(n=2, max_new_tokens=6, temperature=1.0, seed=4)
    one = sample_answers(tiny, qs, batch_size=1, **kw)
    many = sample_answers(tiny, qs, batch_size=5, **kw)
    assert [a["answer"] for a in one] == [a["answer"] for a in many]
    assert len({a["answer"] for a in one}) > 1  # sampled, not one repeated answer
    assert sample_answers(tiny, qs, batch_size=5, **{**kw, "seed": 5}) != many
    # a run interrupted part way (first question, first samples only), resumed with another
    # batch size: the cached answers are kept, the missing ones equal a fresh run's
    sample_answers(tiny, qs[:1], batch_size=3, cache_dir=tmp_path, **{**kw, "n": 1})
    resumed = sample_answers(tiny, qs, batch_size=2, cache_dir=tmp_path, **kw)
    assert resumed == many
    assert len((tmp_path / "answers.jsonl").read_text().splitlines()) == len(many)


def test_top_p_and_top_k_filters():
    import torch

    from emprobe.evaluate.generation import _filter_top

    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.05, 0.15, 0.3, 0.5]]))
    kept = _filter_top(logits, None, 0.7).isfinite()
    assert kept.tolist() == [[True, True, False, False], [False, False, True, True]]
    assert _filter_top(logits, None, 0.5).isfinite().sum(1).tolist() == [1, 1]
    assert _filter_top(logits, 3, 1.0).isfinite().sum(1).tolist() == [3, 3]
    assert _filter_top(logits, None, 1.0).isfinite().all()


@pytest.mark.integration
def test_embedded_batched_greedy_equals_one_at_a_time(embedded):
    from emprobe.evaluate.generation import generate_batched

    prompts = _prompts(4)
    single = [embedded.generate([p], max_new_tokens=24)[0] for p in prompts]
    assert generate_batched(embedded, prompts, max_new_tokens=24, batch_size=4) == single
    assert all(single)


# -- the optional vLLM backend ----------------------------------------------------------------

def _peft_adapter(subject, folder, **cfg):
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(subject.model, peft.LoraConfig(
        target_modules=["q_proj", "down_proj"], **cfg))
    model.save_pretrained(str(folder))
    return folder


def test_lora_plan_sets_the_rank_and_checks_rslora_scaling(tmp_path):
    from emprobe.errors import ConfigError
    from emprobe.evaluate.vllm_backend import lora_plan

    def tiny_model():
        return load_model("tiny-llama")

    rs = lora_plan(_peft_adapter(tiny_model(), tmp_path / "rs", r=4, lora_alpha=6, use_rslora=True))
    assert rs.rank == 4 and rs.max_lora_rank == 8 and rs.use_rslora
    assert rs.scale == pytest.approx(6 / 2)  # alpha / sqrt(r), as PEFT scales it
    plain = lora_plan(_peft_adapter(tiny_model(), tmp_path / "p", r=12, lora_alpha=24))
    assert plain.max_lora_rank == 16 and plain.scale == pytest.approx(2.0)
    # a per-module rank that vLLM's single scale would get wrong is refused
    with pytest.raises(ConfigError, match="rank_pattern"):
        lora_plan(_peft_adapter(tiny_model(), tmp_path / "pat", r=4, lora_alpha=8, use_rslora=True,
                                rank_pattern={"down_proj": 2}))


def test_vllm_generate_without_vllm_is_a_config_error(tiny):
    from emprobe.errors import ConfigError
    from emprobe.evaluate.vllm_backend import vllm_available, vllm_generate

    if vllm_available():
        pytest.skip("vLLM is installed: the GPU test covers it")
    with pytest.raises(ConfigError, match="vLLM is not installed"):
        vllm_generate("tiny", _prompts(2))


def test_vllm_greedy_with_an_adapter_matches_emprobe(tmp_path):
    """On a GPU with vLLM: the embedded model with a LoRA adapter, greedy, vLLM vs emprobe."""
    pytest.importorskip("vllm")
    import torch

    if not torch.cuda.is_available():
        pytest.skip("vLLM needs a GPU")
    from emprobe.evaluate.generation import generate_batched
    from emprobe.evaluate.vllm_backend import vllm_generate

    base = load_model()
    folder = _peft_adapter(load_model(), tmp_path / "ad", r=8, lora_alpha=16, use_rslora=True,
                           init_lora_weights=False)
    subject = load_model(adapter=folder)
    prompts = _prompts(4)
    ours = generate_batched(subject, prompts, max_new_tokens=16)
    theirs = vllm_generate(base.path, prompts, adapter=folder, max_new_tokens=16)
    assert sum(a == b for a, b in zip(ours, theirs)) >= 3  # kernels differ; near-ties may flip
